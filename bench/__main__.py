"""`python -m bench [NAME ...]`: run the named benchmarks (all by default), print a table
for each and write bench/results/<name>.json. Everything targets 127.0.0.1 and is bounded."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from .common import console, write_result

BENCHMARKS = (
    "upload",
    "probe",
    "status",
    "pipeline",
    "scale",
    "chunk_size",
    "transcoder_rss",
    "load",
    "playable",
    "broker_restart",
    "frame_filters",
    "tus_upload",
    "overhead",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument(
        "--n", type=int, metavar="N", help="load: how many clips to upload per run (default 40, or env BENCH_LOAD_N)"
    )
    parser.add_argument(
        "--peer",
        choices=("celery",),
        help="load: also run the same load through a peer design (celery: Celery 5 + Redis)",
    )
    args = parser.parse_args(argv)
    if args.n is not None:
        os.environ["BENCH_LOAD_N"] = str(args.n)
    if args.peer is not None:
        os.environ["BENCH_LOAD_PEER"] = args.peer
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    failed = []
    tables = []
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        console.rule(f"[bold]{name}")
        t0 = time.monotonic()
        load = [round(x, 2) for x in os.getloadavg()]
        try:
            result = module.run()
        except Exception:
            console.print(f"[bold red]{name} failed:[/]\n{traceback.format_exc()}")
            failed.append(name)
            continue
        result["bench_seconds"] = round(time.monotonic() - t0, 1)
        result["loadavg_at_start"] = load  # 1/5/15 min: other work on the machine skews every figure
        path = write_result(name, result)
        table = module.table(result)
        tables.append(table)
        console.print(table)
        console.log(f"{name}: {result['bench_seconds']} s, results in {path}")
    if len(tables) > 1:
        console.rule("[bold]summary")
        for table in tables:
            console.print(table)
    console.log(
        f"all done in {time.monotonic() - started:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

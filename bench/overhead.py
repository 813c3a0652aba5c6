"""overhead: where the CPU goes when short clips flow through the mesh.

The load benchmark's clip (2 s 640x360 H.264+AAC) uploaded N times from 8 clients on a
fresh mesh (2 transcoder processes, as `bench load`). While it runs:
- every process of the mesh (each service, its children such as the probe's fork server
  and its probes, and nats-server) has its CPU seconds read from /proc before and after,
  so the table says how many CPU milliseconds each process spends per video;
- py-spy samples each Python service (`--nonblocking`: the process is never paused, only
  on-CPU samples count), and every sample is put in one category by the first frame that
  matches, innermost first (media work, NATS client, object store, HTTP, JSON and msgspec,
  telemetry, logging, the asyncio loop...), so a process's CPU splits into those shares.

`BENCH_OVERHEAD_N` (default 40) sets N. py-spy comes with the bench extra; without it only
the per-process table is made.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.table import Table

from .common import CLK_TCK, RESULTS, machine_busy_seconds, mesh_processes, own_cpu_seconds, running_mesh

NAME = "overhead"
DEFAULT_N = 40
SAMPLE_HZ = 100
GETS = 300  # status GETs timed after the load
PROBES = 5  # probes timed each way

# (category, pattern on "function (file)") tried innermost frame first: the first match names
# the sample. Media libraries first, so a frame path that calls msgspec stays media work.
CATEGORIES = [
    (
        "media (PyAV, x264, frame path)",
        r"\(av/|/media/|services/transcoder/(chunk|audio|stitch|cmaf|timeline)\.py|thumbnailer/snapshot\.py|services/pipeline/probe\.py",
    ),
    ("probe child start (fork server)", r"multiprocessing/"),
    # the send/recv system calls themselves: on loopback the kernel delivers to the
    # receiving socket in the sender's time, so a message costs mostly here
    ("socket I/O (kernel)", r"selector_events\.py|asyncio/transports\.py|asyncio/streams\.py"),
    ("object store", r"shared/objects\.py"),
    ("telemetry (OpenTelemetry)", r"opentelemetry/"),
    ("logging", r"\(logging/|shared/ops\.py"),
    ("JSON / msgspec", r"msgspec|\(json/"),
    ("NATS client", r"nats/"),
    ("HTTP (uvicorn, FastAPI, httpx)", r"uvicorn/|starlette/|fastapi/|h11/|httptools|httpx/|httpcore/|anyio/|pydantic"),
    ("catalog projection", r"services/catalog/"),
    ("service code", r"services/|shared/"),
    ("asyncio loop", r"asyncio/|selectors\.py"),
]


# Innermost frames that wait rather than compute (py-spy cannot always tell with --nonblocking).
IDLE = re.compile(
    r"^(\S+\.)?(select|poll|wait|_wait_for_tstate_lock|acquire|sleep|recv_into|accept|_worker) \(\S*?(selectors|threading|queue|socket|concurrent/futures/thread|multiprocessing/connection)\.py"
)


def n_videos() -> int:
    return max(1, int(os.environ.get("BENCH_OVERHEAD_N", DEFAULT_N)))


def tree_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in seconds) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / CLK_TCK)
    return out


def cpu_by_root(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process and its live descendants (reaped ones are in cutime)."""
    table = tree_cpu()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                total += table[pid][1]
                todo.extend(children.get(pid, []))
        out[name] = total
    return out


def status_get_cost(mesh, procs: dict[str, int]) -> dict:
    """CPU ms of one `GET /v1/videos/{id}` of a ready video (GETS in a row, one client): the
    client, the gateway, NATS and the catalog, as a polling client costs the mesh."""
    with mesh.client("alice") as client:
        video_id = client.get("/v1/videos?limit=1").json()["items"][0]["id"]
        client.get(f"/v1/videos/{video_id}").raise_for_status()
        before, own0 = cpu_by_root(procs), own_cpu_seconds()
        for _ in range(GETS):
            client.get(f"/v1/videos/{video_id}")
        after, own1 = cpu_by_root(procs), own_cpu_seconds()
    out = {name: round((after[name] - before[name]) / GETS * 1000, 3) for name in procs if after[name] > before[name]}
    out["client"] = round((own1 - own0) / GETS * 1000, 3)
    out["all"] = round(sum(out.values()), 3)
    return out


def probe_cost(tmp: str) -> dict:
    """CPU ms of probing the load clip: `python -m services.pipeline.probe` started per upload
    vs `probe_isolated` (a child forked from the warm fork server), PROBES each, the
    probing process and all its children counted."""
    import asyncio
    import json

    from services.pipeline.probe import child_args, probe_isolated
    from services.pipeline.settings import PipelineSettings

    from .load import load_clip

    path = os.path.join(tmp, "probe.mp4")
    Path(path).write_bytes(load_clip())
    me = {"bench": os.getpid()}
    settings = PipelineSettings.load()
    limits = {"timeout_s": settings.probe_timeout_s, "max_memory_mb": settings.probe_max_memory_mb}
    args = json.dumps(child_args(path, **limits))
    before = cpu_by_root(me)["bench"]
    for _ in range(PROBES):
        subprocess.run([sys.executable, "-m", "services.pipeline.probe", args], check=True, capture_output=True)
    fresh = (cpu_by_root(me)["bench"] - before) / PROBES

    async def forked() -> float:
        await probe_isolated(path, **limits)  # starts the fork server, as an upload does once per pipeline
        start = cpu_by_root(me)["bench"]  # the fork server is a live child: its CPU and its reaped probes
        for _ in range(PROBES):
            await probe_isolated(path, **limits)
        return (cpu_by_root(me)["bench"] - start) / PROBES

    return {"fresh_python": round(fresh * 1000, 1), "fork_server": round(asyncio.run(forked()) * 1000, 1)}


def categorize(raw: str) -> Counter:
    """py-spy's raw (collapsed) output -> samples per category."""
    rules = [(name, re.compile(p)) for name, p in CATEGORIES]
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")[::-1]  # innermost first
        if frames and IDLE.search(frames[0]):
            continue  # blocked in epoll/poll/a lock: sampled as running, but not on a CPU
        name = "other (interpreter, C extensions)"
        for frame in frames:
            hit = next((c for c, rx in rules if rx.search(frame)), None)
            if hit:
                name = hit
                break
        counts[name] += int(n)
    return counts


def run() -> dict:
    from .load import CLIENTS, MESH_ENV, load_clip, run_load
    from .pipeline import warm_up

    n = n_videos()
    py_spy = shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None
    )
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-overhead-") as tmp:
        clip = load_clip()
        with running_mesh(MESH_ENV, label="mesh for overhead") as mesh:
            warm_up(mesh, tmp)
            procs = {name: pid for name, pid in mesh_processes(mesh).items() if name != "vidmesh"}
            spies = {}
            if py_spy:
                for name, pid in procs.items():
                    if name == "nats":
                        continue
                    out = os.path.join(tmp, f"{name}.txt")
                    spies[name] = (
                        subprocess.Popen(
                            [
                                py_spy,
                                "record",
                                "-p",
                                str(pid),
                                "-r",
                                str(SAMPLE_HZ),
                                "-f",
                                "raw",
                                "-o",
                                out,
                                "--nonblocking",
                                "--subprocesses",
                                "-d",
                                "600",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        ),
                        out,
                    )
                time.sleep(1.0)  # attached
            before, own0, busy0, t0 = cpu_by_root(procs), own_cpu_seconds(), machine_busy_seconds(), time.monotonic()
            row = run_load(mesh, clip, n, "overhead", chaos=False)
            after, own1, busy1, t1 = cpu_by_root(procs), own_cpu_seconds(), machine_busy_seconds(), time.monotonic()
            samples = {}
            RESULTS.mkdir(exist_ok=True)
            for name, (spy, out) in spies.items():
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                if os.path.exists(out):
                    samples[name] = categorize(Path(out).read_text())
                    # the stacks themselves, for reading (flamegraph.pl or speedscope take them)
                    shutil.copy(out, RESULTS / f"overhead-{name}.txt")
            get_ms = status_get_cost(mesh, procs)
        probe_ms = probe_cost(tmp)
    ready = max(1, row["ready"])
    per_video_ms = {name: round((after[name] - before[name]) / ready * 1000, 1) for name in procs}
    # the load's clients and poller run in this process, on the same 2 cores
    per_video_ms["bench clients (HTTP uploads, polls)"] = round((own1 - own0) / ready * 1000, 1)
    split = {}
    for name, counts in samples.items():
        total = sum(counts.values())
        if total:
            split[name] = {cat: round(per_video_ms[name] * c / total, 1) for cat, c in counts.most_common()}
    by_category: Counter = Counter()
    for cats in split.values():
        for cat, ms in cats.items():
            by_category[cat] += ms
    return {
        "n": n,
        "clients": CLIENTS,
        "ready": row["ready"],
        "videos_per_min": row["videos_per_min"],
        "ttr_p50_s": row["ttr_p50_s"],
        "ttr_p99_s": row["ttr_p99_s"],
        "cpu_ms_per_video": per_video_ms,
        "cpu_ms_per_video_total": round(sum(per_video_ms.values()), 1),
        # how busy the machine's CPUs were during the run (1.0: every core, all the time)
        "machine_busy_share": round((busy1 - busy0) / ((t1 - t0) * (os.cpu_count() or 1)), 3),
        "split_ms_per_video": split,
        "by_category_ms_per_video": {k: round(v, 1) for k, v in by_category.most_common()},
        "sampled": bool(py_spy),
        "status_get_cpu_ms": get_ms,  # per GET /v1/videos/{id}, by process and in all
        "probe_cpu_ms": probe_ms,  # per probe of the clip: a fresh Python vs the fork server
    }


def table(result: dict) -> Table:
    t = Table(
        title=f"overhead: CPU ms per video, {result['n']} clips of 2 s 640x360 from {result['clients']} clients "
        f"({result['videos_per_min']} videos/min, ttr p50/p99 {result['ttr_p50_s']}/{result['ttr_p99_s']} s, "
        f"CPUs {result['machine_busy_share']:.0%} busy)"
    )
    t.add_column("process")
    t.add_column("CPU ms / video", justify="right")
    t.add_column("where (py-spy, ms / video)")
    for name, ms in sorted(result["cpu_ms_per_video"].items(), key=lambda kv: -kv[1]):
        cats = result["split_ms_per_video"].get(name, {})
        t.add_row(name, f"{ms:.0f}", ", ".join(f"{c} {v:.0f}" for c, v in list(cats.items())[:5]))
    t.add_row(
        "all",
        f"{result['cpu_ms_per_video_total']:.0f}",
        ", ".join(f"{c} {v:.0f}" for c, v in list(result["by_category_ms_per_video"].items())[:6]),
    )
    g, p = result.get("status_get_cpu_ms"), result.get("probe_cpu_ms")
    if g and p:
        t.caption = (
            f"a status GET: {g['all']:.2f} CPU ms (gateway {g.get('gateway', 0):.2f}, catalog "
            f"{g.get('catalog', 0):.2f}, nats {g.get('nats', 0):.2f}, client {g['client']:.2f}); a probe: "
            f"{p['fresh_python']:.0f} ms in a fresh Python vs {p['fork_server']:.0f} ms forked from the fork server"
        )
    return t

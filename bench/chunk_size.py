"""chunk_size: the pipeline benchmark's mesh time and CPU at VIDMESH_CHUNK_S 6, 12 and 24
(segments of 6 s), on the 10 s and the 60 s 1080p30 clip.

One fresh mesh per chunk size (`vidmesh up`'s defaults otherwise: two transcoder processes,
unpinned, on this machine's cores), a warm-up clip, then the 10 s clip and the 60 s clip,
each POST -> ready timed on the bus as in `pipeline`, with the CPU seconds of every mesh
process, and the time to `playable` (chunk 0 and the audio's first segment stored: HLS can
start), which a longer chunk delays. The 10 s clip is one chunk at 12 s and at 24 s alike (the same plan), so it runs
at 6 and 12 only. Rounds alternate the order of the chunk sizes (BENCH_CHUNK_SIZE_ROUNDS,
default 1); ratios are against the 6 s chunks of the same round.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from rich.table import Table

from .common import clip, console, figures_table, loadavg, median, running_mesh
from .pipeline import mesh_once, timeline_text, warm_up

NAME = "chunk_size"
WIDTH, HEIGHT, FPS = 1920, 1080, 30
CHUNKS_S = (6.0, 12.0, 24.0)
SEGMENT_S = 6.0
ROUNDS = max(1, int(os.environ.get("BENCH_CHUNK_SIZE_ROUNDS", 1)))
CLIPS_S = (10.0, 60.0)


def runs_for(chunk_s: float) -> list[float]:
    # A 10 s clip is one chunk at 12 s and at 24 s alike: measured once, at 12.
    return [c for c in CLIPS_S if not (c == 10.0 and chunk_s > 12.0)]


def _median_of(rows: list[dict], label: str) -> float | None:
    """Median seconds after the POST at which `label` was on the bus (None if it never was)."""
    times = [t for r in rows for t, name in r["timeline"] if name == label]
    return round(median(times), 2) if times else None


def run() -> dict:
    clips = {s: Path(clip(s, WIDTH, HEIGHT, FPS)).read_bytes() for s in CLIPS_S}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-chunks-") as tmp:
        for n in range(ROUNDS):
            order = CHUNKS_S if n % 2 == 0 else tuple(reversed(CHUNKS_S))
            for chunk_s in order:
                env = {"VIDMESH_CHUNK_S": f"{chunk_s:g}", "VIDMESH_SEGMENT_S": f"{SEGMENT_S:g}"}
                with running_mesh(env, label=f"mesh with {chunk_s:g} s chunks") as mesh:
                    with console.status("warm-up: one small clip through the mesh (not timed)"):
                        warm_up(mesh, tmp)
                    for seconds in runs_for(chunk_s):
                        with console.status(f"{chunk_s:g} s chunks: the {seconds:g} s clip to ready"):
                            row = asyncio.run(mesh_once(mesh, clips[seconds]))
                        row.update(round=n, chunk_s=chunk_s, clip_s=seconds)
                        rows.append(row)
                        console.log(
                            f"{chunk_s:g} s chunks, {seconds:g} s clip: {row['seconds']} s to ready, "
                            f"cpu {row['cpu_seconds']} s, {row['status']}, load {row['loadavg'][0]}, "
                            f"other work {row['other_share']:.0%}; "
                            f"{timeline_text(row['timeline'])}"
                        )
    summary = []
    for seconds in CLIPS_S:
        for chunk_s in CHUNKS_S:
            mine = [r for r in rows if r["clip_s"] == seconds and r["chunk_s"] == chunk_s]
            if not mine:
                continue
            ratios, cpu_ratios = [], []
            for r in mine:
                base = next(
                    b
                    for b in rows
                    if b["round"] == r["round"] and b["clip_s"] == seconds and b["chunk_s"] == CHUNKS_S[0]
                )
                ratios.append(r["seconds"] / base["seconds"])
                cpu_ratios.append(r["cpu_seconds"] / base["cpu_seconds"])
            summary.append(
                {
                    "clip_s": seconds,
                    "chunk_s": chunk_s,
                    "chunks": mine[0]["plan"]["chunks"] if mine[0].get("plan") else None,
                    "seconds_median": round(median([r["seconds"] for r in mine]), 2),
                    "playable_median": _median_of(mine, "playable"),
                    "cpu_median": round(median([r["cpu_seconds"] for r in mine]), 2),
                    "other_share_median": round(median([r["other_share"] for r in mine]), 3),
                    "ratio_vs_6s": round(median(ratios), 3),
                    "cpu_ratio_vs_6s": round(median(cpu_ratios), 3),
                    "all_ok": all(r["ok"] for r in mine),
                    "runs": len(mine),
                }
            )
    return {
        "segment_s": SEGMENT_S,
        "rows": rows,
        "summary": summary,
        "loadavg": [rows[0]["loadavg"][0], loadavg()],
    }


def table(result: dict) -> Table:
    t = figures_table(
        f"chunk_size: mesh time to ready by VIDMESH_CHUNK_S (segments {result['segment_s']:g} s, "
        "2 transcoder processes, unpinned)",
        (
            "clip",
            "chunk",
            "tasks",
            "playable (median)",
            "time to ready (median)",
            "CPU s (median)",
            "time vs 6 s",
            "CPU vs 6 s",
            "other work",
            "ok",
        ),
    )
    for s in result["summary"]:
        playable = "-" if s["playable_median"] is None else f"{s['playable_median']:.1f} s"
        t.add_row(
            f"{s['clip_s']:g} s",
            f"{s['chunk_s']:g} s",
            str(s["chunks"]),
            playable,
            f"{s['seconds_median']:.1f} s",
            f"{s['cpu_median']:.1f}",
            f"{s['ratio_vs_6s']:.2f}x",
            f"{s['cpu_ratio_vs_6s']:.2f}x",
            f"{s['other_share_median']:.0%}",
            "yes" if s["all_ok"] else "[bold red]NO[/]",
        )
    t.caption = f"{len(result['rows'])} runs; load average {result['loadavg']}"
    return t

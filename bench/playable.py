"""playable: how soon a long upload plays (HLS) against how soon it is ready.

A 60 s 1080p30 H.264+AAC clip (a keyframe every second, as phones record) through a fresh
`vidmesh up` with its defaults (two transcoder processes on this machine's cores, 6 s
segments and chunks). Timed on the bus from the POST: `playable` (chunk 0, every rendition's
first segment, and the audio stored: a player can start) and `ready`. Target: playable
at most 20 % of the time to ready. ROUNDS runs, medians reported.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.table import Table

from .common import clip, console, figures_table, median, running_mesh
from .pipeline import mesh_once, warm_up

NAME = "playable"
SECONDS, WIDTH, HEIGHT, FPS = 60.0, 1920, 1080, 30
ROUNDS = 2
TARGET = 0.20


def run() -> dict:
    rows = []
    data = Path(
        clip(SECONDS, WIDTH, HEIGHT, FPS, gop=FPS)
    ).read_bytes()  # 1 s GOP: the 60 s clip scale, chunk_size and transcoder_rss use
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-playable-") as tmp:
        with running_mesh(label="mesh") as mesh:
            with console.status("warm-up: one small clip through the mesh (not timed)"):
                warm_up(mesh, tmp)
            for n in range(ROUNDS):
                with console.status(f"round {n + 1}: the {SECONDS:g} s clip to ready"):
                    row = asyncio.run(mesh_once(mesh, data))
                times = {name: t for t, name in row["timeline"]}
                row["playable_s"], row["ready_s"] = times.get("playable"), times.get("ready")
                rows.append(row)
                console.log(
                    f"round {n + 1}: playable after {row['playable_s']} s, ready after {row['ready_s']} s, "
                    f"load {row['loadavg'][0]}, other work {row['other_share']:.0%}"
                )
    playable = median([r["playable_s"] for r in rows])
    ready = median([r["ready_s"] for r in rows])
    return {
        "clip": {"seconds": SECONDS, "width": WIDTH, "height": HEIGHT, "fps": FPS, "gop_s": 1.0},
        "rows": rows,
        "playable_median_s": round(playable, 2),
        "ready_median_s": round(ready, 2),
        "share": round(playable / ready, 3),
        "met": playable / ready <= TARGET,
    }


def table(result: dict) -> Table:
    t = figures_table(
        f"playable: a {SECONDS:g} s 1080p clip, upload accepted -> playable (HLS) and -> ready",
        ("runs", "playable (median)", "ready (median)", "playable / ready", f"target <= {TARGET:.0%}"),
    )
    t.add_row(
        str(len(result["rows"])),
        f"{result['playable_median_s']:.1f} s",
        f"{result['ready_median_s']:.1f} s",
        f"{result['share']:.1%}",
        "met" if result["met"] else "[bold red]missed[/]",
    )
    return t

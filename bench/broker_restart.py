"""broker_restart: how long the mesh is away when its embedded nats-server dies.

`vidmesh up` (idle mesh, a small JetStream store) has its nats-server SIGKILLed; the clock
runs from the kill to the first upload the gateway accepts again (202), uploads being
retried every 50 ms (the answers in between are 503 unavailable with Retry-After). The
supervisor restarts the server after its first backoff step (0.5 s); the services
reconnect by themselves (they retry every 0.5 s). Repeated KILLS times on one mesh, each
once the server has run FRESH_S since its restart: a server that dies sooner is in a crash
loop, and the supervisor doubles its restart delay (up to 10 s), as for the services.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path

from rich.table import Table

from .common import console, median, running_mesh

NAME = "broker_restart"
KILLS = 3
FRESH_S = 32.0  # the supervisor treats a server that ran over 30 s as a fresh crash
TIMEOUT_S = 60.0


def _nats_pid(mesh) -> int:
    pids = [int(m.group(1)) for line in list(mesh.lines) if (m := re.match(r"^nats\s*\| started pid=(\d+)", line))]
    return pids[-1]


def run() -> dict:
    from tests.clips import make_clip
    from tests.conftest import wait_terminal

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-") as tmp:
        clip = Path(make_clip(Path(tmp) / "a.mp4", width=320, height=240, seconds=2.0)).read_bytes()
        with running_mesh({"VIDMESH_TRANSCODER_PROCS": "1"}, label="mesh") as mesh, mesh.client() as c:
            runs = []
            started = time.monotonic()
            for _ in range(KILLS):
                time.sleep(max(0.0, FRESH_S - (time.monotonic() - started)))
                os.kill(_nats_pid(mesh), signal.SIGKILL)
                down = time.monotonic()
                refused = 0
                while True:
                    try:
                        r = c.post("/v1/videos", content=clip, headers={"Content-Type": "video/mp4"})
                    except Exception:
                        r = None
                    if r is not None and r.status_code == 202:
                        break
                    refused += 1
                    if time.monotonic() - down > TIMEOUT_S:
                        raise RuntimeError(f"no upload accepted within {TIMEOUT_S:g} s of the kill")
                    time.sleep(0.05)
                back = time.monotonic() - down
                started = down
                status = wait_terminal(c, [r.json()["id"]], 120)[r.json()["id"]]["status"]
                runs.append({"seconds": round(back, 3), "refused": refused, "final": status})
                console.log(f"kill -> accepted in {back:.2f} s ({refused} refused); the upload ended {status}")
    return {"runs": runs, "median_s": median([r["seconds"] for r in runs]), "max_s": max(r["seconds"] for r in runs)}


def table(result: dict) -> Table:
    t = Table(title="embedded nats-server SIGKILLed: kill -> first accepted upload")
    t.add_column("runs")
    t.add_column("median s")
    t.add_column("max s")
    t.add_column("every upload ready")
    ready = all(r["final"] == "ready" for r in result["runs"])
    t.add_row(str(len(result["runs"])), f"{result['median_s']:.2f}", f"{result['max_s']:.2f}", "yes" if ready else "NO")
    return t

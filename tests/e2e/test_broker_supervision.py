"""`vidmesh up` supervises its embedded nats-server like every other process.

The server is SIGKILLed (as the OOM killer or a crash would) under `vidmesh up`:
- while idle: it comes back on the same config and store, the services reconnect by
  themselves (none is restarted), the gateway answers 503 + Retry-After while it is away
  and accepts an upload again within seconds, and that upload becomes ready;
- while 10 uploads are processing: every one ends ready, nothing doubled or lost;
- and `vidmesh up` stopped while the server is down ends every process within the drain
  timeout, exit code 0, without a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.clips import make_clip
from tests.conftest import Mesh, alive, assert_delivered_once, service_pids, wait_for, wait_terminal

pytestmark = pytest.mark.e2e

ENV = {
    "VIDMESH_TRANSCODER_PROCS": "2",
    "VIDMESH_DRAIN_TIMEOUT_S": "3",
    "VIDMESH_SEGMENT_S": "1",
    "VIDMESH_CHUNK_S": "2",
}


def nats_pid(mesh: Mesh) -> int:
    pids = [int(m.group(1)) for line in mesh.lines if (m := re.match(r"^nats\s*\| started pid=(\d+)", line))]
    assert pids, "vidmesh up started no nats-server"
    return pids[-1]


def workers(mesh: Mesh) -> dict[str, int]:
    return {name: pid for name, pid in service_pids(mesh).items() if name != "nats"}


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post("/v1/videos", content=path.read_bytes(), headers={"Content-Type": "video/mp4"})


def tracebacks(lines: list[str]) -> list[str]:
    return [line for line in lines if "Traceback" in line or "shutdown failed" in line.lower()]


@pytest.fixture()
def supervised(tmp_path):
    mesh = Mesh(tmp_path / "mesh", ENV).start()
    yield mesh
    mesh.stop()


def test_killed_while_idle_the_server_comes_back_and_an_upload_is_ready(supervised, tmp_path):
    mesh = supervised
    clip = Path(make_clip(tmp_path / "a.mp4", width=320, height=240, seconds=3.0, codec="mpeg4"))
    before, killed = workers(mesh), nats_pid(mesh)
    mark = len(mesh.lines)
    os.kill(killed, signal.SIGKILL)
    down = time.monotonic()
    answers: list[int] = []
    with mesh.client() as c:

        def accepted():
            r = upload(c, clip)
            answers.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["code"] in ("unavailable", "not_ready") and int(r.headers["Retry-After"]) >= 1
                return None
            assert r.status_code == 202, (r.status_code, r.text)
            return r.json()["id"]

        video_id = wait_for(accepted, 60, 0.05, "an upload accepted again")
        back = time.monotonic() - down
        final = wait_terminal(c, [video_id], 120)[video_id]
    assert final["status"] == "ready", final
    assert nats_pid(mesh) != killed, "the server was restarted"
    assert alive(nats_pid(mesh))
    assert workers(mesh) == before, "no service was restarted: they reconnected by themselves"
    since = mesh.lines[mark:]
    assert any(re.match(r"^nats\s*\| exited with -9; restarting", line) for line in since), since[-20:]
    assert not [line for line in since if "exited with" in line and not line.startswith("nats")]
    print(f"kill -> first accepted upload: {back:.2f} s; answers while away: {sorted(set(answers))}")


def test_killed_while_ten_uploads_process_every_one_ends_ready_once(supervised, tmp_path):
    mesh = supervised
    clips = [
        Path(make_clip(tmp_path / f"c{i}.mp4", width=320, height=240, seconds=4.0, codec="mpeg4")) for i in range(10)
    ]
    before = workers(mesh)
    with mesh.client() as c:
        ids = []
        for clip in clips:
            r = upload(c, clip)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])

        def working():
            videos = [c.get(f"/v1/videos/{v}").json() for v in ids]
            return any(any(p > 0 for p in (v.get("progress") or {}).values()) for v in videos)

        wait_for(working, 60, 0.05, "the pipeline to be working")
        os.kill(nats_pid(mesh), signal.SIGKILL)
        finals = wait_terminal(c, ids, 240)
    assert [f["status"] for f in finals.values()] == ["ready"] * 10, {v: f.get("error") for v, f in finals.items()}
    assert workers(mesh) == before
    assert_delivered_once(mesh, "alice", finals, queue_timeout=60)


def test_stopped_while_the_server_is_down_every_process_ends_cleanly(tmp_path):
    mesh = Mesh(tmp_path / "mesh", ENV).start()
    pids = mesh.child_pids()
    try:
        os.kill(nats_pid(mesh), signal.SIGKILL)
        # at once, inside the supervisor's first restart delay: the services stop while
        # their server is gone
        stopping = time.monotonic()
        code = mesh.stop(timeout=60)
        took = time.monotonic() - stopping
    finally:
        if mesh.proc.poll() is None:
            mesh.proc.kill()
    assert code == 0, "\n".join(mesh.lines[-40:])
    assert took < 3 + 10 + 5, f"stopping took {took:.1f} s"  # the drain timeout and the supervisor's grace
    assert not any("(restarted)" in line for line in mesh.lines), "the server came back before the stop"
    wait_for(lambda: not [p for p in pids if alive(p)], 10, 0.1, "every process gone")
    assert not tracebacks(mesh.lines), "\n".join(tracebacks(mesh.lines))
    assert any(re.match(r"^vidmesh\s*\| stopped", line) for line in mesh.lines)

"""`vidmesh up` as an operator sees it: limits, a crashed service comes back, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Mesh, alive, wait_for

pytestmark = pytest.mark.e2e

LIMIT = 200_000


@pytest.fixture(scope="module")
def small_mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-small-") as tmp:
        m = Mesh(Path(tmp), {"VIDMESH_MAX_UPLOAD_BYTES": str(LIMIT), "VIDMESH_TRANSCODER_PROCS": "1"}).start()
        yield m
        m.stop()


def test_declared_oversize_upload_is_413(small_mesh):
    with small_mesh.client() as c:
        r = c.post("/v1/videos", content=b"\0" * (LIMIT + 1), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 413
        assert r.json()["code"] == "too_large"


def test_streamed_oversize_upload_is_413(small_mesh):
    def body():  # chunked transfer: no Content-Length, so the limit is enforced while streaming
        for _ in range(10):
            yield b"\0" * (LIMIT // 4)

    with small_mesh.client() as c:
        r = c.post("/v1/videos", content=body(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413
        assert r.json()["code"] == "too_large"
        assert c.get("/v1/videos").json()["items"] == []


def test_a_killed_service_is_restarted(small_mesh):
    def pid_of(name):
        found = [
            int(m.group(1)) for line in small_mesh.lines if (m := re.match(rf"{name}\s+\| started pid=(\d+)", line))
        ]
        return found[-1] if found else None

    before = pid_of("catalog")
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: pid_of("catalog") not in (None, before), 30, what="catalog restarted")
    # and it answers again: listing goes through the catalog
    with small_mesh.client() as c:
        wait_for(lambda: c.get("/v1/videos").status_code == 200, 30, what="catalog answering")


def test_sigterm_stops_everything_and_exits_0(tmp_path):
    m = Mesh(tmp_path, {"VIDMESH_TRANSCODER_PROCS": "1"}).start()
    pids = m.child_pids()
    from services.mesh import names

    SERVICES = names()

    assert len(pids) == 1 + len(SERVICES)  # nats-server + every service (one transcoder here)
    assert m.stop() == 0
    wait_for(lambda: not any(alive(p) for p in pids), 20, what="no process left behind")
    assert any("stopped" in line for line in m.lines)


def _up_refused(tmp_path: Path, **env: str) -> tuple[int, str]:
    """`vidmesh up` with these settings: its exit code and output, and nothing left running."""
    import socket
    import subprocess
    import sys

    from services.up import free_ports

    http, nats, monitor = free_ports(3)
    run_env = {
        **os.environ,
        "VIDMESH_DATA_DIR": str(tmp_path / "data"),
        "VIDMESH_HTTP_PORT": str(http),
        "VIDMESH_NATS_PORT": str(nats),
        "VIDMESH_NATS_MONITOR_PORT": str(monitor),
        **env,
    }
    run_env.pop("NATS_URL", None)
    with socket.socket() as taken:
        if env.get("VIDMESH_HTTP_PORT") == "taken":
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            run_env["VIDMESH_HTTP_PORT"] = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "services", "up"], env=run_env, capture_output=True, text=True, timeout=60
        )
    assert not (tmp_path / "data" / "processes.json").exists(), "a service was started"
    return done.returncode, done.stdout + done.stderr


def test_up_refuses_to_start_when_the_gateway_port_is_taken(tmp_path):
    code, out = _up_refused(tmp_path, VIDMESH_HTTP_PORT="taken")
    assert code == 2, out
    assert "not started: VIDMESH_HTTP_PORT" in out and "is not free" in out, out
    assert "nats-server" not in out and "started pid=" not in out, out


def test_up_refuses_to_start_on_a_setting_a_service_cannot_parse(tmp_path):
    code, out = _up_refused(tmp_path, VIDMESH_CHUNK_S="5")
    assert code == 2, out
    assert "not started: pipeline: VIDMESH_CHUNK_S must be a multiple of VIDMESH_SEGMENT_S, got 5 and 6" in out, out
    code, out = _up_refused(tmp_path, VIDMESH_ALERT_LAG="many")
    assert code == 2 and "not started: monitor: VIDMESH_ALERT_LAG" in out, out

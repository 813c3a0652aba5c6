"""A task whose worker dies on every attempt is dead-lettered (max-deliveries advisory), its
video fails with a reason, and `vidmesh dlq replay` re-drives it to `ready`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.conftest import Mesh, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fragile_mesh():
    env = {
        "VIDMESH_TRANSCODER_PROCS": "1",
        "VIDMESH_TASK_MAX_DELIVER": "1",  # one crash is one too many
        "VIDMESH_TASK_ACK_WAIT_S": "2",
        "OTEL_SDK_DISABLED": "false",  # trace context in headers (no exporter configured)
    }
    with tempfile.TemporaryDirectory(prefix="vidmesh-dlq-") as tmp:
        m = Mesh(Path(tmp), env).start()
        yield m
        m.stop()


def vidmesh(mesh: Mesh, *args: str) -> subprocess.CompletedProcess:
    env = {**mesh.env, "NATS_URL": f"nats://127.0.0.1:{mesh.nats_port}"}
    return subprocess.run(
        [sys.executable, "-m", "services", *args], env=env, capture_output=True, text=True, timeout=60
    )


def transcoder_pid(mesh: Mesh) -> int:
    pids = [int(m.group(1)) for line in mesh.lines if (m := re.match(r"transcoder\s+\| started pid=(\d+)", line))]
    return pids[-1]


def test_a_crashing_task_is_dead_lettered_and_replay_recovers_the_video(fragile_mesh, tmp_path):
    clip = tmp_path / "720.mp4"
    make_clip(str(clip), width=1280, height=720, seconds=8.0)
    with fragile_mesh.client() as c:
        video_id = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]
        working = lambda: c.get(f"/v1/videos/{video_id}").json()["progress"]  # noqa: E731
        wait_for(lambda: any(0 < p < 100 for p in working().values()), 60, 0.05, "a transcode in progress")
        os.kill(transcoder_pid(fragile_mesh), signal.SIGKILL)  # mid-encode

        failed = wait_for(
            lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] == "failed" and v, 60, 0.2, "failed"
        )
        assert failed["error"]["code"] == "retries_exhausted"

        listed = vidmesh(fragile_mesh, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = [d for d in json.loads(listed.stdout) if video_id in d["subject"]]
        assert len(letters) == 1
        letter = letters[0]
        assert letter["stream"] == "TASKS_TRANSCODE" and letter["consumer"] == "transcoder"
        assert "traceparent" in letter["headers"]  # the trace context travels with it
        assert json.loads(letter["payload"])["video_id"] == video_id

        shown = vidmesh(fragile_mesh, "dlq", "show", str(letter["id"]))
        assert shown.returncode == 0 and "without an answer" in shown.stdout

        replayed = vidmesh(fragile_mesh, "dlq", "replay", str(letter["id"]))
        assert replayed.returncode == 0, replayed.stderr
        ready = wait_for(
            lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] == "ready" and v, 120, 0.2, "ready"
        )
        assert ready["error"] is None
        assert sorted(r["name"] for r in ready["renditions"]) == ["360p", "480p", "720p"]
        assert [d for d in json.loads(vidmesh(fragile_mesh, "dlq", "list", "--json").stdout) if video_id in d["subject"]] == []
        assert vidmesh(fragile_mesh, "dlq", "show", str(letter["id"])).returncode == 1

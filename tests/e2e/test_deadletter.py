"""A chunk task whose worker dies on every attempt is dead-lettered (max-deliveries
advisory), its video fails with a reason naming the chunk, and `vidmesh dlq replay`
re-drives that chunk, after which the video is stitched and `ready`."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from tests.clips import make_clip
from tests.conftest import Mesh, mesh_events, running_mesh, wait_for, wait_mid_chunk

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fragile_mesh():
    env = {
        "VIDMESH_TRANSCODER_PROCS": "1",
        "VIDMESH_TASK_MAX_DELIVER": "1",  # one crash is one too many
        "VIDMESH_TASK_ACK_WAIT_S": "2",
        # 1 s segments in 4 s chunks: an 8 s clip is two chunks that report progress
        "VIDMESH_SEGMENT_S": "1",
        "VIDMESH_CHUNK_S": "4",
        "OTEL_SDK_DISABLED": "false",  # trace context in headers (no exporter configured)
    }
    with running_mesh("vidmesh-dlq-", env) as m:
        yield m


def transcoder_pid(mesh: Mesh) -> int:
    pids = [int(m.group(1)) for line in mesh.lines if (m := re.match(r"transcoder\s+\| started pid=(\d+)", line))]
    return pids[-1]


def test_a_crashing_task_is_dead_lettered_and_replay_recovers_the_video(fragile_mesh, tmp_path):
    clip = tmp_path / "720.mp4"
    make_clip(str(clip), width=1280, height=720, seconds=8.0, codec="mpeg4")  # cuttable: a keyframe every 12 frames
    with fragile_mesh.client() as c:
        video_id = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]
        chunk, _ = wait_mid_chunk(fragile_mesh, "alice", video_id)
        os.kill(transcoder_pid(fragile_mesh), signal.SIGKILL)  # mid-chunk: the one task it holds

        failed = wait_for(
            lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] == "failed" and v, 60, 0.2, "failed"
        )
        assert failed["error"]["code"] == "retries_exhausted"
        assert failed["error"]["message"].startswith(f"chunk:{chunk}:"), failed["error"]
        assert failed["renditions"] == []  # nothing is stitched from a video with a chunk missing

        listed = fragile_mesh.admin_cli("dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = [d for d in json.loads(listed.stdout) if video_id in d["subject"]]
        assert len(letters) == 1
        letter = letters[0]
        assert letter["stream"] == "TASKS_TRANSCODE" and letter["consumer"] == "transcoder"
        assert "traceparent" in letter["headers"]  # the trace context travels with it
        payload = json.loads(letter["payload"])
        assert payload["video_id"] == video_id
        assert payload["type"] == "transcoder.encode_chunk.v1" and payload["chunk"]["index"] == chunk, payload

        shown = fragile_mesh.admin_cli("dlq", "show", str(letter["id"]))
        assert shown.returncode == 0 and "without an answer" in shown.stdout

        replayed = fragile_mesh.admin_cli("dlq", "replay", str(letter["id"]))
        assert replayed.returncode == 0, replayed.stderr
        ready = wait_for(
            lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] == "ready" and v, 120, 0.2, "ready"
        )
        assert ready["error"] is None
        assert sorted(r["name"] for r in ready["renditions"]) == ["360p", "480p", "720p"]
        assert all(r["duration"] == pytest.approx(8.0, abs=0.2) for r in ready["renditions"]), ready["renditions"]
        # the replayed chunk was encoded once, and only then was the video stitched
        events = mesh_events(fragile_mesh, "alice", video_id, ("chunk_encoded", "rendition_stitched"))
        assert sorted(e["chunk"] for _, kind, e in events if kind == "chunk_encoded") == [0, 1]
        replayed_at = next(seq for seq, kind, e in events if kind == "chunk_encoded" and e["chunk"] == chunk)
        assert all(seq > replayed_at for seq, kind, _ in events if kind == "rendition_stitched")
        assert [
            d for d in json.loads(fragile_mesh.admin_cli("dlq", "list", "--json").stdout) if video_id in d["subject"]
        ] == []
        assert fragile_mesh.admin_cli("dlq", "show", str(letter["id"])).returncode == 1

"""Re-drive across the real processes, each its own NATS user: a chunk task is lost from its
work queue before any transcoder took it, the video stays `processing`, and `vidmesh
schedules run redrive` (as if VIDMESH_STUCK_AFTER_S had passed) makes the pipeline publish
that chunk again; the video is then stitched and `ready`."""

from __future__ import annotations

import time

import msgspec
import pytest
from nats.js.errors import NotFoundError

from shared import topology
from shared.contracts import EncodeChunk
from tests.clips import make_clip
from tests.conftest import Mesh, js_run, mesh_events, nats_servers, running_mesh, wait_for

pytestmark = pytest.mark.e2e

STUCK_AFTER_S = 600  # the default VIDMESH_STUCK_AFTER_S


@pytest.fixture(scope="module")
def slow_mesh():
    env = {
        # one transcoder taking one task at a time: the second chunk waits on the queue
        "VIDMESH_TRANSCODER_PROCS": "1",
        "VIDMESH_WORKER_CONCURRENCY": "1",
        # 1 s segments in 4 s chunks: an 8 s clip is two chunks
        "VIDMESH_SEGMENT_S": "1",
        "VIDMESH_CHUNK_S": "4",
    }
    with running_mesh("vidmesh-redrive-", env) as m:
        yield m


def lose_chunk(mesh: Mesh, video_id: str, index: int) -> bool:
    """Delete chunk `index`'s task of the video from its work queue, if it is there."""
    subject = f"{topology.SUBJECTS[EncodeChunk]}.alice.{video_id}"

    async def query(js):
        try:
            msg = await js.get_last_msg(topology.TASKS_TRANSCODE, subject)
        except NotFoundError:
            return False
        if msgspec.json.decode(msg.data)["chunk"]["index"] != index:
            return False
        await js.delete_msg(topology.TASKS_TRANSCODE, msg.seq)
        return True

    return js_run(nats_servers(mesh), query)


def test_a_lost_chunk_task_is_published_again_by_the_pipeline_and_the_video_finishes(slow_mesh, tmp_path):
    clip = tmp_path / "720.mp4"
    make_clip(str(clip), width=1280, height=720, seconds=8.0, codec="mpeg4")  # cuttable: a keyframe every 12 frames
    with slow_mesh.client() as c:
        video_id = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]
        wait_for(lambda: lose_chunk(slow_mesh, video_id, 1), 60, 0.05, "the second chunk's task, to lose it")

        def settled():
            kinds = [kind for _, kind, _ in mesh_events(slow_mesh, "alice", video_id)]
            return {"chunk_encoded", "audio_encoded", "thumbnail_extracted"} <= set(kinds) and kinds

        kinds = wait_for(settled, 120, 0.2, "everything but the lost chunk to be done")
        assert kinds.count("chunk_encoded") == 1 and "rendition_stitched" not in kinds
        assert c.get(f"/v1/videos/{video_id}").json()["status"] == "processing"

        not_yet = slow_mesh.admin_cli("schedules", "run", "redrive")
        assert not_yet.returncode == 0, not_yet.stdout + not_yet.stderr
        assert "stuck=0" in not_yet.stdout and "republished=0" in not_yet.stdout, not_yet.stdout
        stuck = slow_mesh.admin_cli("schedules", "run", "redrive", "--as-of", str(int(time.time()) + STUCK_AFTER_S + 5))
        assert stuck.returncode == 0, stuck.stdout + stuck.stderr
        assert "stuck=1" in stuck.stdout and "republished=1" in stuck.stdout, stuck.stdout

        ready = wait_for(
            lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] == "ready" and v, 120, 0.2, "ready"
        )
    assert ready["error"] is None and ready["renditions"], ready
    encoded = [e["chunk"] for _, kind, e in mesh_events(slow_mesh, "alice", video_id, ("chunk_encoded",))]
    assert sorted(encoded) == [0, 1]  # the re-driven chunk, once
    listed = slow_mesh.admin_cli("schedules")
    assert listed.returncode == 0 and "redrive" in listed.stdout, listed.stdout + listed.stderr
    violations = [line for line in slow_mesh.lines if "Violation" in line or "permissions violation" in line]
    assert not violations, "\n".join(violations[:20])

"""Delivery promises that need the product's own mechanisms: idempotent uploads,
cancellation mid-encode, tasks of deleted videos dropped, 429 under backlog."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import nats
import pytest

from services.up import free_port
from tests.clips import make_clip
from tests.conftest import Mesh, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clips") / "tiny.mp4"
    make_clip(str(path), width=320, height=240, seconds=1.0)
    return path.read_bytes()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> bytes:
    """1280x720, 20 s that can be cut (a keyframe every 12 frames): three 6 s chunks of
    three rungs each, spread over both transcoders."""
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    make_clip(str(path), width=1280, height=720, seconds=20.0, codec="mpeg4")
    return path.read_bytes()


def nats_query(mesh: Mesh, fn):
    """Run fn(js) against the mesh's NATS server and return its result."""

    async def run():
        nc = await nats.connect(mesh.nats_url)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


def media_names(mesh: Mesh, prefix: str) -> list[str]:
    async def names(js):
        store = await js.object_store("media")
        try:
            return [o.name for o in await store.list(ignore_deletes=True) if o.name.startswith(prefix)]
        except Exception:  # nats-py raises on an empty bucket
            return []

    return nats_query(mesh, names)


def stream_messages(mesh: Mesh, stream: str) -> int:
    async def count(js):
        return (await js.stream_info(stream)).state.messages

    return nats_query(mesh, count)


def queued_for(mesh: Mesh, stream: str, tenant: str, video_id: str) -> int:
    """Tasks of one video on a work queue (waiting, or in a worker's hands)."""

    async def count(js):
        info = await js.stream_info(stream, subjects_filter=f"*.cmd.*.{tenant}.{video_id}")
        return sum((info.state.subjects or {}).values())

    return nats_query(mesh, count)


def post(client, data: bytes, **headers):
    return client.post("/v1/videos", content=data, headers={"Content-Type": "video/mp4", **headers})


def test_a_retried_upload_returns_the_first_video(mesh, tiny):
    with mesh.client() as c:
        first = post(c, tiny, **{"Idempotency-Key": "order-42"})
        assert first.status_code == 202
        again = post(c, tiny, **{"Idempotency-Key": "order-42"})
        assert again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        # another tenant with the same key gets its own video
        with mesh.client("bob") as b:
            assert post(b, tiny, **{"Idempotency-Key": "order-42"}).json()["id"] != first.json()["id"]
        other = post(c, tiny, **{"Idempotency-Key": "order-43"})
        assert other.json()["id"] != first.json()["id"]


def test_concurrent_retries_start_one_video(mesh, tiny):
    results = []

    def send():
        with mesh.client() as c:
            r = post(c, tiny, **{"Idempotency-Key": "concurrent-1"})
            results.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [code for code, _ in results] == [202] * 4
    ids = {video_id for _, video_id in results}
    assert len(ids) == 1
    video_id = ids.pop()
    with mesh.client() as c:
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")
        listed = [v["id"] for v in c.get("/v1/videos", params={"limit": 100}).json()["items"]]
    assert listed.count(video_id) == 1

    # one pipeline run: one upload event for the video
    async def uploads(js):
        subject = f"gateway.evt.video_uploaded.alice.{video_id}"
        info = await js.stream_info("EVENTS", subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    assert nats_query(mesh, uploads) == 1


def test_a_failed_first_upload_does_not_hold_the_key(mesh, tiny):
    with mesh.client() as c:
        bad = post(c, b"not a video at all", **{"Idempotency-Key": "retry-after-422"})
        assert bad.status_code == 422
        good = post(c, tiny, **{"Idempotency-Key": "retry-after-422"})
        assert good.status_code == 202 and "idempotent-replayed" not in good.headers


def test_delete_mid_encode_stops_the_chunks_and_removes_everything(mesh, long_clip):
    with mesh.client() as c:
        video_id = post(c, long_clip).json()["id"]
        # a chunk is encoded (its fragments stored) and more are in the transcoders' hands
        wait_for(
            lambda: any(0 < p < 100 for p in c.get(f"/v1/videos/{video_id}").json()["progress"].values()),
            90,
            0.1,
            "a chunk encoded",
        )
        assert media_names(mesh, f"alice/{video_id}/cmaf/"), "fragments are stored"
        mark = len(mesh.lines)
        r = c.delete(f"/v1/videos/{video_id}")
        assert r.status_code == 200 and r.json()["status"] == "deleted"
        # the workers notice within a second or two, not at the end of the chunk
        wait_for(
            lambda: any(re.search(rf"abandoned chunk:\d+ of video {video_id}", line) for line in mesh.lines[mark:]),
            5,
            0.05,
            "a transcoder to abandon a chunk of the deleted video",
        )
        assert c.get(f"/v1/videos/{video_id}").json()["status"] == "deleted"
        # the source, the fragments of every chunk and audio, and nothing left behind
        wait_for(lambda: media_names(mesh, f"alice/{video_id}/") == [], 20, 0.2, "the media to be gone")
        wait_for(lambda: queued_for(mesh, "TASKS_TRANSCODE", "alice", video_id) == 0, 30, 0.2, "its tasks to be gone")


@pytest.fixture(scope="module")
def stalled_mesh():
    """A mesh with no transcoder: tasks wait in the queue, so the backlog is real."""
    with tempfile.TemporaryDirectory(prefix="vidmesh-stalled-") as tmp:
        m = Mesh(Path(tmp), {"VIDMESH_TRANSCODER_PROCS": "0", "VIDMESH_MAX_BACKLOG": "1"}).start()
        yield m
        m.stop()


def test_tasks_of_a_deleted_video_are_dropped_not_run(stalled_mesh, tiny):
    with stalled_mesh.client("bob") as c:
        video_id = post(c, tiny).json()["id"]
        queued = lambda: queued_for(stalled_mesh, "TASKS_TRANSCODE", "bob", video_id)  # noqa: E731
        wait_for(lambda: queued() == 2, 20, what="its chunk and audio tasks queued")
        assert c.delete(f"/v1/videos/{video_id}").status_code == 200
    env = {
        **stalled_mesh.env,
        "NATS_URL": f"nats://127.0.0.1:{stalled_mesh.nats_port}",
        "VIDMESH_HTTP_PORT": str(free_port()),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "services", "run", "transcoder"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the late worker takes the deleted video's tasks off the queue without running them
        wait_for(lambda: queued() == 0, 30, 0.2, "the deleted video's tasks to be dropped")
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
    assert f"dropping chunk:0 of deleted video {video_id}" in out, out[-2000:]
    assert f"dropping audio of deleted video {video_id}" in out, out[-2000:]
    assert media_names(stalled_mesh, f"bob/{video_id}/") == []
    assert worker.returncode == 0, out[-2000:]


def test_uploads_get_429_when_the_backlog_is_too_deep(stalled_mesh, tiny, tmp_path):
    big = tmp_path / "480.mp4"
    make_clip(str(big), width=854, height=480, seconds=0.5)  # a chunk and the audio: backlog 2 > limit 1
    with stalled_mesh.client() as c:
        # nothing queued (the tasks of the previous test's video were dropped), and the
        # gateway's view of the backlog, refreshed every few seconds, has caught up
        wait_for(lambda: stream_messages(stalled_mesh, "TASKS_TRANSCODE") == 0, 20, what="an empty queue")
        wait_for(lambda: post(c, big.read_bytes()).status_code == 202, 30, 0.5, "an upload accepted")
        wait_for(lambda: stream_messages(stalled_mesh, "TASKS_TRANSCODE") == 2, 20, what="tasks queued")

        def refused():
            r = post(c, tiny)
            return r if r.status_code == 429 else None

        r = wait_for(refused, 10, 0.3, "a 429")
        assert r.json()["code"] == "overloaded"
        assert int(r.headers["retry-after"]) > 0


def test_events_of_a_ready_then_deleted_video_end_with_the_delete(mesh, tiny):
    with mesh.client() as c:
        video_id = post(c, tiny).json()["id"]
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")
        assert c.delete(f"/v1/videos/{video_id}").status_code == 200
        with c.stream("GET", f"/v1/videos/{video_id}/events", timeout=30) as r:
            names = [line.split(": ", 1)[1] for line in r.iter_lines() if line.startswith("event: ")]
    assert "video_ready" in names and names[-1] == "video_deleted", names

"""The runtime against a real nats-server: topology, dedup, the consumer loop, micro, objects."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.js import api
from prometheus_client import REGISTRY

from services import mesh, provision
from shared import contracts, objects, topology
from shared.bus import Bus, RpcError
from shared.consumer import ConsumerLoop, Poison, Retry
from shared.contracts import GetVideo, Video, VideoReady
from shared.declaration import ConsumerSpec, Declaration
from shared.objects import CHUNK_SIZE, TooLarge
from shared.service import Service
from shared.settings import Settings
from tests.integration.conftest import connected_bus


@pytest.fixture
async def bus(nats_server):
    async with connected_bus(nats_server.url, VIDMESH_TASK_ACK_WAIT_S="2") as b:
        yield b


async def test_topology_is_idempotent_and_complete(bus):
    await provision.ensure(bus.js, bus.settings, mesh.consumers())  # a second replica starting up
    names = {s.config.name for s in await bus.js.streams_info()}
    assert {topology.EVENTS, topology.TASKS_TRANSCODE, topology.TASKS_THUMBNAIL, topology.DEADLETTER} <= names
    assert {"KV_videos", "KV_jobs", "OBJ_media"} <= names
    info = await bus.js.stream_info(topology.TASKS_TRANSCODE)
    assert info.config.retention in ("workqueue", api.RetentionPolicy.WORK_QUEUE)
    for spec in mesh.consumers():
        assert (await bus.js.consumer_info(spec.stream, spec.durable)).config.durable_name == spec.durable


async def test_publish_with_the_same_msg_id_is_stored_once(bus):
    event = VideoReady(video_id=f"dedup{time.time_ns()}", tenant="t")
    first = await bus.publish(event, msg_id=f"{event.video_id}:ready")
    second = await bus.publish(event, msg_id=f"{event.video_id}:ready")
    assert first == second
    msg = await bus.js.get_last_msg(topology.EVENTS, topology.subject_for(event))
    assert msg.seq == first
    assert "traceparent" in msg.headers  # trace context travels with every message


SPEC = ConsumerSpec(topology.TASKS_THUMBNAIL, "thumbnailer", ("thumbnailer.cmd.extract_thumbnail.>",), ack_wait_s=2)


async def _run_loop(bus, handler, *, until, max_deliver=3, on_exhausted=None, timeout=20):
    loop = ConsumerLoop(
        bus, SPEC, contracts.ExtractThumbnail, handler, max_deliver=max_deliver, ack_wait_s=2, on_exhausted=on_exhausted
    )
    task = asyncio.create_task(loop.run())
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "consumer loop did not get there in time"
            await asyncio.sleep(0.05)
    finally:
        await loop.stop(5)
        task.cancel()


def _task(video_id: str) -> contracts.ExtractThumbnail:
    return contracts.ExtractThumbnail(video_id=video_id, tenant="t", source="t/x/source")


async def _pending(bus) -> int:
    return (await bus.js.stream_info(topology.TASKS_THUMBNAIL)).state.messages


async def test_retry_naks_with_delay_then_acks_on_success(bus):
    seen = []

    async def handler(task, delivery):
        seen.append(delivery.attempt)
        if delivery.attempt < 3:
            raise Retry("not yet", delay=0.1)

    await bus.publish(_task("retry1"), msg_id=f"retry1:{time.time_ns()}")
    await _run_loop(bus, handler, until=lambda: len(seen) >= 3, max_deliver=5)
    assert seen == [1, 2, 3]
    assert await _pending(bus) == 0


async def test_poison_is_terminated_at_once_and_dead_lettered_with_headers(bus):
    calls, exhausted = [], []

    async def handler(task, delivery):
        calls.append(task)
        raise Poison("bad_media", "not a video")

    async def on_exhausted(task, delivery, exc):
        exhausted.append(exc)

    before = (await bus.js.stream_info(topology.DEADLETTER)).state.messages
    await bus.publish(_task("poison1"), msg_id=f"poison1:{time.time_ns()}")
    await _run_loop(bus, handler, until=lambda: exhausted, on_exhausted=on_exhausted)
    await asyncio.sleep(0.3)
    assert len(calls) == 1  # never retried
    assert (await bus.js.stream_info(topology.DEADLETTER)).state.messages == before + 1
    dead = await bus.js.get_last_msg(topology.DEADLETTER, "dlq.evt.TASKS_THUMBNAIL.thumbnailer")
    assert dead.headers["Vidmesh-Dead-Reason"].startswith("bad_media")
    assert dead.headers["Vidmesh-Dead-Subject"].startswith("thumbnailer.cmd.extract_thumbnail.t.poison1")
    assert b"poison1" in dead.data
    assert await _pending(bus) == 0


async def test_undecodable_payload_is_terminated_not_looped(bus):
    calls = []

    async def handler(task, delivery):
        calls.append(task)

    ack = await bus.js.publish("thumbnailer.cmd.extract_thumbnail.t.garbage", b"\xff not json")
    loop_done = asyncio.Event()

    async def watch():
        while await _pending(bus):
            await asyncio.sleep(0.05)
        loop_done.set()

    watcher = asyncio.create_task(watch())
    await _run_loop(bus, handler, until=loop_done.is_set)
    watcher.cancel()
    assert calls == []
    dead = await bus.js.get_last_msg(topology.DEADLETTER, "dlq.evt.TASKS_THUMBNAIL.thumbnailer")
    assert dead.headers["Vidmesh-Dead-Stream-Seq"] == str(ack.seq)
    assert "undecodable" in dead.headers["Vidmesh-Dead-Reason"]


async def test_exhausted_retries_are_reported_and_dead_lettered(bus):
    attempts, exhausted = [], []

    async def handler(task, delivery):
        attempts.append(delivery.attempt)
        raise Retry("still failing", delay=0.05)

    async def on_exhausted(task, delivery, exc):
        exhausted.append(str(exc))

    await bus.publish(_task("exhaust1"), msg_id=f"exhaust1:{time.time_ns()}")
    await _run_loop(bus, handler, until=lambda: exhausted, max_deliver=3, on_exhausted=on_exhausted)
    assert attempts == [1, 2, 3] and exhausted == ["still failing"]
    dead = await bus.js.get_last_msg(topology.DEADLETTER, "dlq.evt.TASKS_THUMBNAIL.thumbnailer")
    assert dead.headers["Vidmesh-Dead-Deliveries"] == "3"


async def test_heartbeats_keep_a_long_task_from_being_redelivered(bus):
    """ack_wait is 2 s; a 5 s handler must run once, kept alive by in_progress()."""
    runs = []

    async def handler(task, delivery):
        runs.append(delivery.attempt)
        await asyncio.sleep(5)

    await bus.publish(_task("long1"), msg_id=f"long1:{time.time_ns()}")
    start = time.monotonic()
    await _run_loop(bus, handler, until=lambda: runs and time.monotonic() - start > 6.5)
    assert runs == [1]
    assert await _pending(bus) == 0


async def test_stop_naks_the_message_in_hand_so_it_comes_back_at_once(bus):
    started = asyncio.Event()

    async def slow(task, delivery):
        started.set()
        await asyncio.sleep(60)

    await bus.publish(_task("drain1"), msg_id=f"drain1:{time.time_ns()}")
    loop = ConsumerLoop(bus, SPEC, contracts.ExtractThumbnail, slow, ack_wait_s=30)
    run = asyncio.create_task(loop.run())
    await asyncio.wait_for(started.wait(), 10)
    await loop.stop(timeout=0.2)
    run.cancel()
    # a second worker gets it right away, not after ack_wait (30 s)
    got = []

    async def fast(task, delivery):
        got.append(delivery.attempt)

    await _run_loop(bus, fast, until=lambda: got, timeout=10)
    assert got == [2]


async def test_micro_endpoint_answers_and_is_discoverable(bus):
    svc = Service(Declaration("probe-test", "test service", serves=("test.rpc.get",)))

    @svc.endpoint("test.rpc.get", GetVideo, concurrency=2)
    async def get(req: GetVideo, b) -> Video:
        if req.video_id == "missing":
            raise RpcError("not_found", "no such video")
        return Video(id=req.video_id, status="ready", created_at=1, updated_at=2)

    svc.bus = bus
    await svc._start_endpoints()
    try:
        video = await bus.request("test.rpc.get", GetVideo(tenant="t", video_id="abc"), Video)
        assert video.id == "abc" and video.status == "ready"
        with pytest.raises(RpcError) as err:
            await bus.request("test.rpc.get", GetVideo(tenant="t", video_id="missing"), Video)
        assert err.value.code == "not_found"
        ping = await bus.nc.request("$SRV.PING.vidmesh-probe-test", b"", timeout=2)
        assert json.loads(ping.data)["name"] == "vidmesh-probe-test"
        info = json.loads((await bus.nc.request("$SRV.INFO.vidmesh-probe-test", b"", timeout=2)).data)
        assert any(e["subject"] == "test.rpc.get" for e in info["endpoints"])
        stats = json.loads((await bus.nc.request("$SRV.STATS.vidmesh-probe-test", b"", timeout=2)).data)
        assert sum(e["num_requests"] for e in stats["endpoints"]) >= 2
    finally:
        await svc._micro.stop()


async def test_request_to_nobody_is_unavailable(bus):
    with pytest.raises(RpcError) as err:
        await bus.request("nobody.rpc.here", GetVideo(tenant="t", video_id="x"), Video, timeout=1)
    assert err.value.code in ("unavailable", "timeout")


async def _pieces(total: int, piece: int = 100_000):
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield bytes((sent + i) % 251 for i in range(n))
        sent += n


async def test_objects_stream_in_and_out_with_ranges(bus):
    size = CHUNK_SIZE * 3 + 12345
    expected = b"".join([p async for p in _pieces(size)])
    info = await bus.media.put_stream("t/v/obj", _pieces(size))
    assert info.size == size and info.chunks == 4
    got = await bus.media.info("t/v/obj")
    assert b"".join([p async for p in bus.media.read(got)]) == expected
    for start, end in [(0, 0), (CHUNK_SIZE - 5, CHUNK_SIZE + 5), (size - 10, size - 1), (1000, 2 * CHUNK_SIZE + 7)]:
        assert b"".join([p async for p in bus.media.read(got, start, end)]) == expected[start : end + 1]
    # the standard nats-py client reads what we wrote (same layout and digest)
    store = await bus.js.object_store(topology.OBJ_MEDIA)
    assert (await store.get("t/v/obj")).data == expected


def _bytes_read() -> float:
    return REGISTRY.get_sample_value("vidmesh_media_bytes_total", {"direction": "out"}) or 0.0


async def test_reads_seek_through_the_checkpoint_index_past_interleaved_chunks(bus, monkeypatch, tmp_path):
    monkeypatch.setattr(objects, "MAX_CHECKPOINTS", 4)  # 13 chunks -> every 4th recorded
    size = CHUNK_SIZE * 12 + 777
    expected = b"".join([p async for p in _pieces(size)])
    other = b"x" * (CHUNK_SIZE * 2)

    async def with_another_upload_in_the_middle():
        sent = 0
        async for piece in _pieces(size):
            yield piece
            sent += len(piece)
            if sent >= CHUNK_SIZE * 5 and not other_done:
                other_done.append(await bus.media.put_stream("t/v/other", _aiter(other)))

    other_done: list = []
    await bus.media.put_stream("t/v/seek", with_another_upload_in_the_middle())
    info = await bus.media.info("t/v/seek")
    assert other_done and info.metadata[objects.CHECKPOINTS_KEY].startswith("4:")
    for start, end in [
        (0, 9),
        (CHUNK_SIZE * 5 - 3, CHUNK_SIZE * 6 + 3),
        (CHUNK_SIZE * 9, CHUNK_SIZE * 11),
        (size - 5, size - 1),
    ]:
        before = _bytes_read()
        assert b"".join([p async for p in bus.media.read(info, start, end)]) == expected[start : end + 1]
        # from the checkpoint before `start`: at most 3 chunks ahead of it plus the range
        assert _bytes_read() - before <= (3 + (end - start) // CHUNK_SIZE + 2) * CHUNK_SIZE, (start, end)
    assert b"".join([p async for p in bus.media.read(await bus.media.info("t/v/other"))]) == other

    # head and tail only, in a sparse file of the object's size
    before = _bytes_read()
    await bus.media.download("t/v/seek", tmp_path / "ends", ends=CHUNK_SIZE)
    got = (tmp_path / "ends").read_bytes()
    assert len(got) == size and _bytes_read() - before <= 6 * CHUNK_SIZE
    assert got[:CHUNK_SIZE] == expected[:CHUNK_SIZE] and got[-CHUNK_SIZE:] == expected[-CHUNK_SIZE:]
    assert got[CHUNK_SIZE:-CHUNK_SIZE] == bytes(size - 2 * CHUNK_SIZE)


async def _aiter(data: bytes):
    yield data


async def test_overwriting_an_object_replaces_its_chunks(bus):
    await bus.media.put_stream("t/v/over", _pieces(CHUNK_SIZE * 2))
    before = (await bus.js.stream_info("OBJ_media")).state.messages
    await bus.media.put_stream("t/v/over", _pieces(CHUNK_SIZE * 2))
    assert (await bus.js.stream_info("OBJ_media")).state.messages == before  # old chunks purged
    assert await bus.media.delete("t/v/over")
    assert await bus.media.info("t/v/over") is None


async def test_an_oversized_stream_stores_nothing(bus):
    before = (await bus.js.stream_info("OBJ_media")).state.messages
    with pytest.raises(TooLarge):
        await bus.media.put_stream("t/v/big", _pieces(CHUNK_SIZE * 3), max_bytes=CHUNK_SIZE * 2)
    assert await bus.media.info("t/v/big") is None
    assert (await bus.js.stream_info("OBJ_media")).state.messages == before


async def test_services_reconnect_after_a_server_restart(tmp_path):
    from tests.conftest import NatsServer

    server = NatsServer(tmp_path).start()
    settings = Settings.load({"NATS_URL": server.url})
    b = await Bus.connect(settings, "restart-test")
    try:
        await provision.ensure(b.js, settings, mesh.consumers())
        server.stop()
        server.start()  # same port, same store
        deadline = time.monotonic() + 20
        while b.nc.stats["reconnects"] < 1 or not b.nc.is_connected:
            assert time.monotonic() < deadline, "did not reconnect"
            await asyncio.sleep(0.1)
        seq = await b.publish(VideoReady(video_id="after", tenant="t"), msg_id="after-restart")
        assert seq >= 1
        # what was stored before the restart is still there (file store, fsync always)
        assert (await b.js.stream_info(topology.EVENTS)).state.messages >= 1
    finally:
        await b.close()
        server.stop()


def test_nats_py_version_has_what_we_rely_on():
    from importlib.metadata import version

    assert tuple(int(x) for x in version("nats-py").split(".")[:2]) >= (2, 16)


async def test_a_write_whose_acks_stop_coming_fails_in_bounded_time(tmp_path, monkeypatch):
    """The server stops answering mid-write (SIGSTOP: acks in flight never come): the writer
    fails within ACK_TIMEOUT_S instead of waiting forever (a task holding its message with
    heartbeats would hang with it), and nothing half-written is left once it answers again."""
    import os
    import signal

    from tests.conftest import NatsServer

    monkeypatch.setattr(objects, "ACK_TIMEOUT_S", 1.0)
    monkeypatch.setattr(objects, "PURGE_ATTEMPTS", 1)  # the frozen server answers no purge either
    server = NatsServer(tmp_path / "nats").start()
    settings = Settings.load({"NATS_URL": server.url})
    b = await Bus.connect(settings, "test")
    try:
        await provision.ensure(b.js, settings, mesh.consumers())

        async def stalls():
            yield b"x" * CHUNK_SIZE
            os.kill(server.proc.pid, signal.SIGSTOP)  # the next chunks' acks never arrive
            for _ in range(3):
                yield b"y" * CHUNK_SIZE

        try:  # without the bound this waits forever, and wait_for ends it with TimeoutError
            with pytest.raises(ConnectionError, match="no acknowledgement"):
                await asyncio.wait_for(b.media.put_stream("t/v/stalled", stalls()), 60)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await b.media.info("t/v/stalled") is None
    finally:
        await b.close()
        server.stop()

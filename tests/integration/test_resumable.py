"""Resumable uploads' bytes and state against a real nats-server (services/gateway/resumable.py):
PATCHes append chunks under the upload's own chunk subject (the first fenced, then a count
check), the state records them, completion commits one object without copying (readable by nats-py's own object store
client, digest checked, Range reads through the seek index), chunks a dead writer stored
but never recorded is dropped by the next writer, a checksum PATCH keeps nothing on a
mismatch, a digest is rebuilt from the store by another gateway, the lock is handed over
(or taken from a gateway that is gone), and the scheduled clean-up removes expired uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from nats.js.errors import KeyNotFoundError

from services import mesh, provision
from services.gateway import resumable
from services.gateway.resumable import UploadProblem, Uploads
from services.scheduler import jobs
from shared import telemetry, topology
from shared.bus import Bus
from shared.objects import CHUNK_SIZE
from tests.conftest import NatsServer
from tests.settings import MeshSettings

TENANT = "t1"


@pytest.fixture
async def bus(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    settings = MeshSettings.load({"NATS_URL": server.url, "VIDMESH_DATA_DIR": str(tmp_path / "data")})
    telemetry.setup("test")
    b = await Bus.connect(settings, "test")
    await provision.ensure(b.js, settings, mesh.consumers())
    yield b
    await b.close()
    server.stop()


async def pieces(data: bytes, size: int = 64 * 1024, pause_after: int | None = None, pause: float = 0.0):
    for i in range(0, len(data), size):
        if pause_after is not None and i >= pause_after:
            await asyncio.sleep(pause)
            pause_after = None
        yield data[i : i + size]


async def new_upload(u: Uploads, length: int, upload_id: str = "up1"):
    return await u.create(TENANT, upload_id, length, metadata={}, raw_metadata=None, expires_at=time.time() + 3600)


async def subject_count(bus, nuid: str) -> int:
    subject = bus.media.chunk_subject(nuid)
    info = await bus.js.stream_info("OBJ_media", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def write(u: Uploads, data: bytes, upload_id: str = "up1", **kw):
    async with u.hold(TENANT, upload_id) as held:
        result = await u.patch(held, pieces(data), **kw)
    return result


async def test_patches_become_one_object_without_a_copy(bus, monkeypatch):
    monkeypatch.setattr(resumable, "WINDOW_CHUNKS", 2)  # several hand-overs per PATCH
    monkeypatch.setattr(resumable, "RECORD_CHUNKS", 4)  # and several records
    u = Uploads(bus)
    await u.start()
    data = os.urandom(9 * CHUNK_SIZE + 12345)
    state, _ = await new_upload(u, len(data))
    # uneven PATCHes: under a chunk (the tail lives in the state), across records, the rest
    cuts = [0, 1000, 1000 + 5 * CHUNK_SIZE + 7, len(data)]
    for a, b in zip(cuts, cuts[1:]):
        result = await write(u, data[a:b])
        assert result.ended == "eof" and result.state.offset == b
        stored, _ = await u.load(TENANT, "up1")
        assert stored.offset == b and stored.lease is None
        assert len(stored.tail) == b - stored.chunks * CHUNK_SIZE or stored.status == "complete"
    stored, revision = await u.load(TENANT, "up1")
    assert stored.status == "complete" and stored.chunks == 10
    assert await subject_count(bus, stored.nuid) == 10  # every chunk once, none left over

    async def announce(state):
        return "video"

    async with u.hold(TENANT, "up1") as held:
        outcome = await u.finish(held, announce)
    assert outcome == "video" and held.state.status == "done"
    # the standard object: nats-py's own client reads it and checks its SHA-256 digest
    obs = await bus.js.object_store("media")
    got = await obs.get(state.source)
    assert got.data == data
    info = await bus.media.info(state.source)
    assert info.nuid == state.nuid and info.size == len(data)
    # a Range near the end starts from the seek index, and is right
    tail = b"".join([p async for p in bus.media.read(info, len(data) - 300_000)])
    assert tail == data[-300_000:]


async def test_chunks_stored_but_never_recorded_are_dropped_by_the_next_writer(bus):
    u = Uploads(bus)
    await u.start()
    data = os.urandom(6 * CHUNK_SIZE)
    state, _ = await new_upload(u, len(data))
    await write(u, data[: 2 * CHUNK_SIZE])
    stored, _ = await u.load(TENANT, "up1")
    # a gateway stored two chunks right after the recorded ones, then died before recording them
    subject = bus.media.chunk_subject(stored.nuid)
    await u._commit_window(subject, [b"x" * CHUNK_SIZE, b"y" * CHUNK_SIZE], stored.last_seq, 4)
    assert await subject_count(bus, stored.nuid) == 4
    # HEAD still says 2 chunks; the client resumes from there
    result = await write(u, data[2 * CHUNK_SIZE :])
    assert result.state.status == "complete" and result.state.offset == len(data)
    assert await subject_count(bus, stored.nuid) == 6
    async with u.hold(TENANT, "up1") as held:
        await u.finish(held, _accept)
    obs = await bus.js.object_store("media")
    assert (await obs.get(state.source)).data == data


async def _accept(state):
    return None


async def test_a_writer_that_lost_its_lock_cannot_slip_chunks_in(bus):
    u = Uploads(bus)
    await u.start()
    data = os.urandom(4 * CHUNK_SIZE)
    await new_upload(u, len(data))
    await write(u, data[:CHUNK_SIZE])
    stored, _ = await u.load(TENANT, "up1")
    subject = bus.media.chunk_subject(stored.nuid)
    # someone else (a writer whose lock was taken) appended since: the fence refuses a
    # chunk expected right after the one it knew of
    await u._commit_window(subject, [b"z" * CHUNK_SIZE], stored.last_seq, 2)
    with pytest.raises(resumable._Fenced):
        await u._commit_window(subject, [b"w" * CHUNK_SIZE], stored.last_seq, 2)
    assert await subject_count(bus, stored.nuid) == 2  # nothing of the refused window stayed
    # and chunks that slip in between a window's own are found by its count, and dropped
    last = (await bus.js.get_last_msg("OBJ_media", subject)).seq
    sneaky = asyncio.create_task(bus.js.publish(subject, b"s" * CHUNK_SIZE))
    with pytest.raises(resumable._Fenced):
        await u._commit_window(subject, [b"a" * CHUNK_SIZE] * 8, last, 2 + 8)
    await sneaky
    assert await subject_count(bus, stored.nuid) == 3  # ours deleted; the intruder's for the next fence


async def test_a_checksum_patch_keeps_nothing_on_a_mismatch(bus, monkeypatch):
    monkeypatch.setattr(resumable, "WINDOW_CHUNKS", 2)
    monkeypatch.setattr(resumable, "RECORD_CHUNKS", 2)
    u = Uploads(bus)
    await u.start()
    data = os.urandom(8 * CHUNK_SIZE)
    await new_upload(u, len(data))
    await write(u, data[:1000])
    body = data[1000 : 1000 + 5 * CHUNK_SIZE]
    result = await write(u, body, checksum=hashlib.sha256(b"something else").digest())
    assert result.checksum_ok is False
    stored, _ = await u.load(TENANT, "up1")
    assert stored.offset == 1000 and stored.chunks == 0 and stored.tail == data[:1000]
    assert await subject_count(bus, stored.nuid) == 0  # its chunks were deleted
    result = await write(u, body, checksum=hashlib.sha256(body).digest())
    assert result.checksum_ok is True and result.state.offset == 1000 + len(body)
    result = await write(u, data[1000 + len(body) :])
    assert result.state.status == "complete"
    async with u.hold(TENANT, "up1") as held:
        await u.finish(held, _accept)
    obs = await bus.js.object_store("media")
    assert (await obs.get(topology.source_key(TENANT, "up1"))).data == data


async def test_another_gateway_rebuilds_the_digest_from_the_store(bus):
    first, second = Uploads(bus, "gw-a"), Uploads(bus, "gw-b")
    await first.start()
    await second.start()
    data = os.urandom(3 * CHUNK_SIZE + 99)
    await new_upload(first, len(data))
    await write(first, data[: 2 * CHUNK_SIZE + 10])
    result = await write(second, data[2 * CHUNK_SIZE + 10 :])  # no digest in its memory
    assert result.state.status == "complete"
    async with second.hold(TENANT, "up1") as held:
        await second.finish(held, _accept)
    obs = await bus.js.object_store("media")
    assert (await obs.get(topology.source_key(TENANT, "up1"))).data == data  # digest checked


async def test_the_lock_is_handed_over_and_taken_from_a_gateway_that_is_gone(bus):
    a, b = Uploads(bus, "gw-a"), Uploads(bus, "gw-b")
    await a.start()
    await b.start()
    data = os.urandom(4 * CHUNK_SIZE)
    await new_upload(a, len(data))

    # a slow PATCH on gateway a: part of it, then a pause
    async def slow():
        async with a.hold(TENANT, "up1") as held:
            return await a.patch(held, pieces(data[: 3 * CHUNK_SIZE], pause_after=CHUNK_SIZE + 500, pause=30))

    first = asyncio.create_task(slow())
    await asyncio.sleep(0.5)
    async with b.hold(TENANT, "up1") as held:  # asks a to let go; a records what it had
        assert held.state.offset == CHUNK_SIZE + 500 or held.state.offset >= CHUNK_SIZE
    result = await asyncio.wait_for(first, 5)
    assert result.ended == "released"

    # a gateway that is gone (no responders on its subject) loses its lock at once
    stored, revision = await a.load(TENANT, "up1")
    dead = resumable.Lease(owner="gw-dead", token="t", until=time.time() + 60)
    import msgspec

    await a.save(msgspec.structs.replace(stored, lease=dead), revision)
    started = time.monotonic()
    async with b.hold(TENANT, "up1") as held:
        assert held.state.lease.owner == "gw-b"
    assert time.monotonic() - started < 2


async def test_a_busy_holder_that_does_not_let_go_is_423(bus, monkeypatch):
    monkeypatch.setattr(resumable, "RELEASE_TIMEOUT_S", 1.0)
    a, b = Uploads(bus, "gw-a"), Uploads(bus, "gw-b")
    await a.start()
    await b.start()
    await new_upload(a, 10)
    async with a.hold(TENANT, "up1") as held:
        held.done.clear()  # busy: it never says it is done (a probe that takes long)
        with pytest.raises(UploadProblem) as exc:
            async with b.hold(TENANT, "up1"):
                pass
        assert exc.value.status == 423


async def test_the_scheduled_clean_up_removes_expired_uploads_and_urls(bus):
    u = Uploads(bus)
    await u.start()
    now = time.time()
    data = os.urandom(2 * CHUNK_SIZE + 5)
    old, _ = await u.create(TENANT, "old", len(data), metadata={}, raw_metadata=None, expires_at=now - 3600)
    fresh, _ = await u.create(TENANT, "fresh", len(data), metadata={}, raw_metadata=None, expires_at=now + 3600)
    for upload_id in ("old", "fresh"):
        async with u.hold(TENANT, upload_id) as held:
            await u.patch(held, pieces(data[: 2 * CHUNK_SIZE]))
    token, _ = await u.create_direct(TENANT, expires_at=now - 3600, max_size=10, metadata={})
    keep, _ = await u.create_direct(TENANT, expires_at=now + 3600, max_size=10, metadata={})
    summary = await jobs.upload_expiry(bus, now)
    assert summary["expired"] == 1 and summary["direct_expired"] == 1
    assert await u.load(TENANT, "old") is None and await subject_count(bus, old.nuid) == 0
    assert (await u.load(TENANT, "fresh"))[0].offset == 2 * CHUNK_SIZE
    assert await subject_count(bus, fresh.nuid) == 2
    assert await u.load_direct(token) is None and await u.load_direct(keep) is not None
    kv = await bus.kv(topology.KV_RESUMABLE)
    with pytest.raises(KeyNotFoundError):
        await kv.get(resumable.upload_key(TENANT, "old"))
    # no delete marker is left behind either
    info = await bus.js.stream_info(f"KV_{topology.KV_RESUMABLE}", subjects_filter=f"$KV.{topology.KV_RESUMABLE}.up.>")
    assert set(info.state.subjects or {}) == {f"$KV.{topology.KV_RESUMABLE}.up.{TENANT}.fresh"}

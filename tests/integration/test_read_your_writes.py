"""Read-your-writes: a caller that made a write passes its EVENTS stream sequence
(`after_seq`) and the catalog answers once its record of the video holds it, whichever
catalog replica applied the event. Catalog replicas run in-process (their endpoints and,
where a test says so, their consumer) against a real nats-server of this module's own, so
the catalog consumer sees only these tests' events."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from services.catalog import declaration as catalog_declaration
from services.catalog import service as catalog
from services.catalog.projection import apply, record_decoder, record_encoder
from services.gateway import app as gateway
from services.gateway.uploads import new_video_id
from services.notifier import service as notifier
from shared import topology
from shared.bus import RpcError
from shared.contracts import (
    DeleteVideo,
    GetPlaylist,
    GetVideo,
    Playlist,
    Probed,
    RenditionSpec,
    RenditionStitched,
    SourceInfo,
    ThumbnailExtracted,
    Video,
    VideoDeleted,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
    encode,
)
from shared.service import Service
from tests.conftest import NatsServer
from tests.integration.conftest import connected_bus

TENANT = "ryw"
SOURCE = SourceInfo(size=1, container="mp4", duration=2.0, width=640, height=360, fps=30.0, video_codec="h264")
RUNG = RenditionSpec(name="360p", width=640, height=360)


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats-ryw")).start()
    yield server
    server.stop()


@pytest.fixture
async def bus(server):
    async with connected_bus(server.url) as b:
        replicas: list[Service] = []

        async def replica(*, projects: bool) -> Service:
            """A catalog replica: the catalog's endpoints as it registers them, and its
            consumer when it `projects`."""
            one = Service(catalog_declaration.DECLARATION)
            one._endpoints = list(catalog.service._endpoints)
            one._consumers = list(catalog.service._consumers) if projects else []
            one.settings = b.settings
            await one._start()
            replicas.append(one)
            return one

        b.replica = replica
        try:
            yield b
        finally:
            for one in replicas:
                await one.stop()


def uploaded(video_id: str) -> VideoUploaded:
    return VideoUploaded(
        video_id=video_id,
        tenant=TENANT,
        object=f"{TENANT}/{video_id}/source",
        created_at=time.time(),
        source=SOURCE,
        filename="clip.mp4",
    )


async def waiting(video_id: str, timeout: float = 10.0) -> None:
    """Until a request of this process waits on the video's record (it reached the catalog)."""
    key = topology.state_key(TENANT, video_id)
    deadline = time.monotonic() + timeout
    while key not in catalog._awaited:
        assert time.monotonic() < deadline, "no request waits on the record"
        await asyncio.sleep(0.01)


async def watched(bus, video_id: str, timeout: float = 10.0) -> None:
    """Until the catalog watches the video's key in the bucket (an ordered consumer on it)."""
    subject = f"$KV.{topology.KV_VIDEOS}.{topology.state_key(TENANT, video_id)}"
    deadline = time.monotonic() + timeout
    while not any(c.config.filter_subject == subject for c in await bus.js.consumers_info(f"KV_{topology.KV_VIDEOS}")):
        assert time.monotonic() < deadline, "the catalog does not watch the key"
        await asyncio.sleep(0.01)


async def get(bus, video_id: str, after_seq: int = 0) -> Video:
    return await bus.request(
        topology.RPC_CATALOG_GET, GetVideo(tenant=TENANT, video_id=video_id, after_seq=after_seq), Video
    )


async def stored(bus, video_id: str):
    kv = await bus.kv(topology.KV_VIDEOS)
    return record_decoder.decode((await kv.get(topology.state_key(TENANT, video_id))).value)


async def test_a_read_after_a_write_is_answered_once_the_projection_holds_it(bus):
    await bus.replica(projects=False)
    video_id = new_video_id()
    seq = await bus.publish(uploaded(video_id), msg_id=f"{video_id}:uploaded")
    with pytest.raises(RpcError) as exc:  # nothing projects yet: a plain read does not know it
        await get(bus, video_id)
    assert exc.value.code == "not_found"

    asked = asyncio.create_task(get(bus, video_id, after_seq=seq))
    await waiting(video_id)
    await bus.replica(projects=True)  # the projection starts only now
    video = await asked
    assert video.status == "processing" and video.filename == "clip.mp4" and video.source == SOURCE
    assert (await stored(bus, video_id)).seq == seq
    playlist = await bus.request(
        topology.RPC_CATALOG_PLAYLIST, GetPlaylist(tenant=TENANT, video_id=video_id, after_seq=seq), Playlist
    )
    assert playlist.status == "processing"
    assert catalog._awaited == {}, "no waiter is left behind"


async def test_a_replica_that_did_not_apply_the_event_answers_from_the_stored_record(bus):
    await bus.replica(projects=False)  # this replica never projects
    video_id = new_video_id()
    event = uploaded(video_id)
    seq = await bus.publish(event, msg_id=f"{video_id}:uploaded")
    asked = asyncio.create_task(get(bus, video_id, after_seq=seq))
    await waiting(video_id)
    await watched(bus, video_id)  # the request read the record before it was written
    # another replica (another process: no signal in this one) stores the record
    kv = await bus.kv(topology.KV_VIDEOS)
    await kv.put(topology.state_key(TENANT, video_id), record_encoder.encode(apply(None, event, time.time(), seq)))
    video = await asyncio.wait_for(asked, catalog.WAIT_S - 1)
    assert video.status == "processing" and video.filename == "clip.mp4"


async def test_a_write_the_projection_does_not_hold_in_time_is_not_yet(bus, monkeypatch):
    monkeypatch.setattr(catalog, "WAIT_S", 0.5)
    await bus.replica(projects=True)
    video_id = new_video_id()
    seq = await bus.publish(uploaded(video_id), msg_id=f"{video_id}:uploaded")
    assert (await get(bus, video_id, after_seq=seq)).status == "processing"
    for after in (seq + 1000, 10**12):  # a sequence this video's record does not reach
        started = time.monotonic()
        with pytest.raises(RpcError) as exc:
            await get(bus, video_id, after_seq=after)
        assert exc.value.code == "not_yet" and f"sequence {seq}" in exc.value.message
        assert time.monotonic() - started < 5
    with pytest.raises(RpcError) as exc:  # no record at all
        await get(bus, new_video_id(), after_seq=seq)
    assert exc.value.code == "not_yet"
    assert catalog._awaited == {}


async def test_delete_then_get_reads_deleted_and_the_record_holds_the_delete(bus):
    await bus.replica(projects=True)
    video_id = new_video_id()
    seq = await bus.publish(uploaded(video_id), msg_id=f"{video_id}:uploaded")
    await get(bus, video_id, after_seq=seq)
    deleted = await bus.request(topology.RPC_CATALOG_DELETE, DeleteVideo(tenant=TENANT, video_id=video_id), Video)
    assert deleted.status == "deleted"
    assert (await get(bus, video_id)).status == "deleted"
    event = await bus.js.get_last_msg(topology.EVENTS, f"{topology.SUBJECTS[VideoDeleted]}.{TENANT}.{video_id}")
    assert (await stored(bus, video_id)).seq == event.seq
    assert (await get(bus, video_id, after_seq=event.seq)).status == "deleted"


async def test_the_notifier_snapshots_the_video_as_the_catalog_shows_it_with_the_event(bus):
    await bus.replica(projects=False)
    video_id = new_video_id()
    stitched = RenditionStitched(
        video_id=video_id, tenant=TENANT, rendition=RUNG.name, object="o", width=640, height=360, size=9
    )
    history = [
        uploaded(video_id),
        VideoPlanned(video_id=video_id, tenant=TENANT, renditions=[RUNG]),
        ThumbnailExtracted(video_id=video_id, tenant=TENANT, object="t", width=640, height=360, size=9),
        stitched,
    ]
    for event in history:
        await bus.publish(event, msg_id=f"{video_id}:{type(event).__name__}")
    ready = VideoReady(video_id=video_id, tenant=TENANT)
    seq = await bus.publish(ready, msg_id=f"{video_id}:ready")
    delivery = SimpleNamespace(seq=seq, attempt=1, last_attempt=False)  # what the notifier's consumer hands over
    snapshot = asyncio.create_task(notifier._video_for(bus, ready, delivery))
    await waiting(video_id)
    await bus.replica(projects=True)
    video = await snapshot
    assert video.status == "ready" and [r.name for r in video.renditions] == [RUNG.name]


async def test_an_upload_is_answered_once_the_catalog_has_it(bus):
    """The gateway's POST: what it answers and what a GET right after it reads."""
    await bus.replica(projects=False)

    async def probe(msg):
        await msg.respond(encode(Probed(source=SOURCE)))

    sub = await bus.nc.subscribe(topology.RPC_PIPELINE_PROBE, cb=probe)
    try:
        video_id = new_video_id()
        announced = asyncio.create_task(
            gateway.announce(bus, TENANT, video_id, f"{TENANT}/{video_id}/source", "clip.mp4", "video/mp4")
        )
        await waiting(video_id)
        assert not announced.done(), "the upload was answered before the catalog had it"
        await bus.replica(projects=True)
        video = await announced
        assert video.status == "processing" and video.filename == "clip.mp4"
        assert (await get(bus, video_id)).id == video_id  # a plain GET right after
    finally:
        await sub.unsubscribe()

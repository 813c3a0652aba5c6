"""A deleted video's records are tombstones that keep late events from bringing it back,
and that the NATS server removes after VIDMESH_TOMBSTONE_TTL_S (per-message TTL), so the
`videos` and `jobs` buckets do not grow forever. Real nats-server, real KV."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.errors import KeyNotFoundError

from services.catalog import service as catalog
from services.catalog.projection import record_decoder
from services.gateway.uploads import new_video_id
from services.pipeline import jobs
from services.pipeline import service as pipeline
from shared import topology
from shared.contracts import ChunkEncoded, RenditionStitched, SegmentInfo, SourceInfo, VideoDeleted, VideoUploaded
from shared.settings import ConfigError, Settings
from tests.integration.conftest import connected_bus

TTL_S = 2


@pytest.fixture
async def bus(nats_server):
    async with connected_bus(nats_server.url, VIDMESH_TOMBSTONE_TTL_S=str(TTL_S)) as b:
        yield b


def _uploaded(tenant: str, video_id: str) -> VideoUploaded:
    source = SourceInfo(size=1, container="mp4", duration=1.0, width=320, height=240, fps=30.0, video_codec="h264")
    return VideoUploaded(video_id=video_id, tenant=tenant, object="x", created_at=time.time(), source=source)


async def _value(bus, bucket: str, key: str) -> bytes | None:
    kv = await bus.kv(bucket)
    try:
        return (await kv.get(key)).value
    except KeyNotFoundError:
        return None


async def test_a_deleted_video_holds_off_late_events_then_its_records_expire(bus, tmp_path):
    gone, kept = new_video_id(), new_video_id()
    for vid in (gone, kept):
        await catalog.project(bus, _uploaded("tomb", vid))
    deleted = VideoDeleted(video_id=gone, tenant="tomb")
    await catalog.project(bus, deleted)
    await pipeline.fan_in(bus, deleted, jobs.deleted)  # deleted before its job existed: a job tombstone
    key = topology.state_key("tomb", gone)

    # late results of the deleted video do not bring it back; the fragments a late chunk
    # stored are deleted rather than orphaned
    fragment = topology.segment_key("tomb", gone, "240p", 0)
    (tmp_path / "fragment").write_bytes(b"moof")
    await bus.media.put_file(fragment, tmp_path / "fragment")
    late_chunk = ChunkEncoded(
        video_id=gone,
        tenant="tomb",
        chunk=0,
        segments=[SegmentInfo(index=0, start=0.0, duration=1.0, sizes={"240p": 4})],
    )
    stitched = RenditionStitched(
        video_id=gone, tenant="tomb", rendition="240p", object="y", width=320, height=240, size=1
    )
    for late in (late_chunk, stitched):
        await catalog.project(bus, late)
    await pipeline.fan_in(bus, late_chunk, lambda job: jobs.chunk_done(job, late_chunk))
    assert record_decoder.decode(await _value(bus, topology.KV_VIDEOS, key)).status == "deleted"
    assert jobs.job_decoder.decode(await _value(bus, topology.KV_JOBS, key)).status == "deleted"
    assert await bus.media.info(fragment) is None

    deadline = time.monotonic() + TTL_S + 10
    while (
        await _value(bus, topology.KV_VIDEOS, key) is not None or await _value(bus, topology.KV_JOBS, key) is not None
    ):
        assert time.monotonic() < deadline, "the tombstones did not expire"
        await asyncio.sleep(0.2)
    # a live video's record has no TTL
    assert (
        record_decoder.decode(await _value(bus, topology.KV_VIDEOS, topology.state_key("tomb", kept))).status
        != "deleted"
    )


def test_tombstones_outlive_every_event_by_default():
    s = Settings.load({"VIDMESH_EVENTS_MAX_AGE_S": "3600"})
    assert s.tombstone_ttl_s == 3600 + 24 * 3600
    with pytest.raises(ConfigError, match="VIDMESH_TOMBSTONE_TTL_S"):
        Settings.load({"VIDMESH_TOMBSTONE_TTL_S": "0.5"})

"""The catalog applies a video's events in the order they were delivered, even when it
handles many at once: `video_ready` delivered right behind the `rendition_stitched` it
stands for is applied after it, not refused for a redelivery seconds later. Real
nats-server, real KV."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.catalog import service as catalog
from services.gateway.uploads import new_video_id
from shared.consumer import Retry
from shared.contracts import (
    RenditionSpec,
    RenditionStitched,
    SourceInfo,
    ThumbnailExtracted,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
)

TENANT = "order"
RUNGS = [RenditionSpec(name="360p", width=640, height=360), RenditionSpec(name="240p", width=426, height=240)]


async def _planned_video(bus) -> str:
    video_id = new_video_id()
    source = SourceInfo(size=1, container="mp4", duration=2.0, width=640, height=360, fps=30.0, video_codec="h264")
    await catalog.project(
        bus, VideoUploaded(video_id=video_id, tenant=TENANT, object="x", created_at=time.time(), source=source)
    )
    await catalog.project(bus, VideoPlanned(video_id=video_id, tenant=TENANT, renditions=RUNGS))
    thumb = ThumbnailExtracted(video_id=video_id, tenant=TENANT, object="t", width=640, height=360, size=9)
    await catalog.project(bus, thumb)
    return video_id


def _stitched(video_id: str, rung: RenditionSpec) -> RenditionStitched:
    return RenditionStitched(
        video_id=video_id,
        tenant=TENANT,
        rendition=rung.name,
        object=f"{rung.name}.mp4",
        width=rung.width,
        height=rung.height,
        size=100,
        duration=2.0,
        has_audio=True,
    )


async def test_ready_handled_with_its_results_is_applied_after_them(bus):
    video_id = await _planned_video(bus)
    # as the consumer loop starts them: one task per delivered message, in delivery order
    results = await asyncio.gather(
        catalog.project(bus, _stitched(video_id, RUNGS[0])),
        catalog.project(bus, _stitched(video_id, RUNGS[1])),
        catalog.project(bus, VideoReady(video_id=video_id, tenant=TENANT)),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    record = results[-1]
    assert record.status == "ready" and sorted(record.renditions) == ["240p", "360p"]
    assert catalog._turns == {}, "no lock is kept once a video's events are applied"


async def test_ready_without_its_results_still_waits_for_them(bus):
    video_id = await _planned_video(bus)
    await catalog.project(bus, _stitched(video_id, RUNGS[0]))
    with pytest.raises(Retry):  # 240p is still out: a ready video would 404 its download
        await catalog.project(bus, VideoReady(video_id=video_id, tenant=TENANT))
    assert catalog._turns == {}

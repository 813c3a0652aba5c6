"""The catalog projection and the pipeline fan-in: idempotent, order-tolerant, terminal."""

from __future__ import annotations

import itertools

from services.catalog.projection import Incomplete, apply, to_view
from services.pipeline import jobs
from shared.contracts import (
    ErrorInfo,
    RenditionProgress,
    RenditionSpec,
    RenditionTranscoded,
    SourceInfo,
    ThumbnailExtracted,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
)

V, T = "01abc", "acme"
SPECS = [RenditionSpec(name="720p", width=1280, height=720), RenditionSpec(name="360p", width=640, height=360)]
UPLOADED = VideoUploaded(
    video_id=V, tenant=T, object="acme/01abc/source", created_at=100.0, source=SourceInfo(size=10, width=1280, height=720)
)
PLANNED = VideoPlanned(video_id=V, tenant=T, renditions=SPECS)
DONE_720 = RenditionTranscoded(video_id=V, tenant=T, rendition="720p", object="o720", width=1280, height=720, size=5)
DONE_360 = RenditionTranscoded(video_id=V, tenant=T, rendition="360p", object="o360", width=640, height=360, size=3)
THUMB = ThumbnailExtracted(video_id=V, tenant=T, object="othumb", width=640, height=360)
READY = VideoReady(video_id=V, tenant=T)


def fold(events, now=200.0):
    """Apply events in this order; one that is not applicable yet comes back later, as a
    nak'ed message does."""
    record, queue = None, list(events)
    for _ in range(len(queue) * len(queue) + 1):
        if not queue:
            return record
        event = queue.pop(0)
        try:
            record = apply(record, event, now) or record
        except Incomplete:
            queue.append(event)
    raise AssertionError(f"never applicable: {queue}")


def test_a_full_history_reads_ready_with_urls():
    view = to_view(fold([UPLOADED, PLANNED, DONE_360, DONE_720, THUMB, READY]))
    assert view.status == "ready"
    assert [r.name for r in view.renditions] == ["720p", "360p"]  # ladder order, not arrival order
    assert view.renditions[1].url == f"/v1/videos/{V}/renditions/360p"
    assert view.thumbnail.url == f"/v1/videos/{V}/thumbnail"
    assert view.created_at == 100.0 and view.progress == {}


def test_ready_waits_for_every_planned_result():
    """A ready event never makes a video ready while a rendition it stands for is missing."""
    import pytest

    partial = fold([UPLOADED, PLANNED, DONE_360, THUMB])
    with pytest.raises(Incomplete, match="720p"):
        apply(partial, READY, 1)
    assert apply(apply(partial, DONE_720, 1), READY, 2).status == "ready"


def test_a_rendition_is_visible_before_the_video_is_ready():
    view = to_view(fold([UPLOADED, PLANNED, DONE_360]))
    assert view.status == "processing"
    assert [r.name for r in view.renditions] == ["360p"]


def test_any_order_of_events_gives_the_same_state():
    events = [UPLOADED, PLANNED, DONE_360, DONE_720, THUMB, READY]
    expected = fold(events)
    for order in itertools.permutations(events):
        assert fold(order) == expected


def test_replayed_events_change_nothing():
    record = fold([UPLOADED, PLANNED, DONE_360])
    for event in (UPLOADED, PLANNED, DONE_360):
        assert apply(record, event, 999.0) is None


def test_progress_only_moves_forward_and_stops_at_terminal():
    record = fold([UPLOADED, RenditionProgress(video_id=V, tenant=T, rendition="720p", percent=50)])
    assert apply(record, RenditionProgress(video_id=V, tenant=T, rendition="720p", percent=20), 1) is None
    ready = fold([UPLOADED, PLANNED, DONE_360, DONE_720, THUMB, READY])
    assert apply(ready, RenditionProgress(video_id=V, tenant=T, rendition="720p", percent=90), 1) is None


def test_failed_keeps_its_reason_and_delete_wins_over_everything():
    failed = fold([UPLOADED, VideoFailed(video_id=V, tenant=T, error=ErrorInfo(code="bad_media", message="x"))])
    assert failed.status == "failed" and failed.error.code == "bad_media"
    late = RenditionProgress(video_id=V, tenant=T, rendition="720p", percent=10)
    assert apply(failed, late, 1) is None
    for event in (PLANNED, DONE_360, DONE_720, THUMB):  # its failed task was replayed and succeeded
        failed = apply(failed, event, 1) or failed
    recovered = apply(failed, READY, 1)
    assert recovered.status == "ready" and recovered.error is None
    assert apply(recovered, VideoFailed(video_id=V, tenant=T, error=ErrorInfo(code="x", message="y")), 2) is None
    deleted = fold([UPLOADED, DONE_360, VideoDeleted(video_id=V, tenant=T), READY, DONE_720])
    view = to_view(deleted)
    assert view.status == "deleted" and view.renditions == [] and view.thumbnail is None
    assert set(deleted.objects()) == {"o360", "acme/01abc/source"}


def test_fan_in_is_ready_only_when_every_task_is_done():
    job = jobs.new_job(V, T, "src", SPECS)
    assert set(job.tasks) == {"transcode:720p", "transcode:360p", "thumbnail"}
    job = jobs.task_done(job, "transcode:720p", "o720")
    job = jobs.task_done(job, "transcode:720p", "o720")  # redelivered result
    assert job.status == "processing" and job.outputs == ["o720"]
    job = jobs.task_done(job, "thumbnail", "othumb")
    job = jobs.task_done(job, "transcode:360p", "o360")
    assert job.status == "ready"


def test_fan_in_fails_on_the_first_failed_task_and_stays_failed():
    job = jobs.new_job(V, T, "src", SPECS)
    job = jobs.task_failed(job, "thumbnail", ErrorInfo(code="bad_media", message="no frame"))
    assert job.status == "failed" and job.error.code == "bad_media"
    for task in ("transcode:720p", "transcode:360p"):
        job = jobs.task_done(job, task, None)
    assert job.status == "failed"
    assert jobs.deleted(job).status == "deleted"
    # replaying the dead-lettered thumbnail task recovers the video
    recovered = jobs.task_done(job, "thumbnail", "othumb")
    assert recovered.status == "ready" and recovered.error is None

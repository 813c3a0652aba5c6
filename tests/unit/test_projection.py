"""The catalog projection: idempotent, order-tolerant, terminal; progress is the share of
segments encoded, renditions appear when stitched."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest

from services.catalog.projection import Incomplete, apply, to_playlist, to_view
from shared import topology
from shared.contracts import (
    AudioEncoded,
    ChunkEncoded,
    ChunkProgress,
    ErrorInfo,
    RenditionSpec,
    RenditionStitched,
    SegmentInfo,
    SourceInfo,
    TaskFailed,
    ThumbnailExtracted,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoPlayable,
    VideoReady,
    VideoUploaded,
)

V, T = "01abc", "acme"
SPECS = [RenditionSpec(name="720p", width=1280, height=720), RenditionSpec(name="360p", width=640, height=360)]
UPLOADED = VideoUploaded(
    video_id=V,
    tenant=T,
    object="acme/01abc/source",
    created_at=100.0,
    source=SourceInfo(size=10, width=1280, height=720),
)
# 4 segments of 6 s in two chunks of two segments each
PLANNED = VideoPlanned(video_id=V, tenant=T, renditions=SPECS, chunks=2, segments=4, segment_s=6.0, audio=True)


def segment(index: int, *tracks: str, size: int = 10) -> SegmentInfo:
    return SegmentInfo(index=index, start=6.0 * index, duration=6.0, sizes={t: size for t in tracks})


CHUNK_0 = ChunkEncoded(
    video_id=V,
    tenant=T,
    chunk=0,
    segments=[segment(0, "720p", "360p"), segment(1, "720p", "360p")],
    inits={"720p": "a" * 64, "360p": "b" * 64},
    codecs={"720p": "avc1.64001f", "360p": "avc1.4d401e"},
)
CHUNK_1 = ChunkEncoded(video_id=V, tenant=T, chunk=1, segments=[segment(2, "720p", "360p"), segment(3, "720p", "360p")])
AUDIO = AudioEncoded(video_id=V, tenant=T, segments=[segment(i, "audio", size=2) for i in range(4)])
STITCHED_720 = RenditionStitched(
    video_id=V, tenant=T, rendition="720p", object="o720", width=1280, height=720, size=5, duration=24.0, has_audio=True
)
STITCHED_360 = RenditionStitched(
    video_id=V, tenant=T, rendition="360p", object="o360", width=640, height=360, size=3, duration=24.0, has_audio=True
)
THUMB = ThumbnailExtracted(video_id=V, tenant=T, object="othumb", width=640, height=360, size=7)
READY = VideoReady(video_id=V, tenant=T)
HISTORY = [UPLOADED, PLANNED, CHUNK_0, CHUNK_1, AUDIO, STITCHED_360, STITCHED_720, THUMB, READY]


def progress(chunk: int, segments: int) -> ChunkProgress:
    return ChunkProgress(video_id=V, tenant=T, chunk=chunk, segments=segments)


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
    view = to_view(fold(HISTORY))
    assert view.status == "ready"
    assert [r.name for r in view.renditions] == ["720p", "360p"]  # ladder order, not arrival order
    assert view.renditions[1].url == f"/v1/videos/{V}/renditions/360p"
    assert (view.renditions[0].duration, view.renditions[0].has_audio, view.renditions[0].size) == (24.0, True, 5)
    assert view.thumbnail.url == f"/v1/videos/{V}/thumbnail"
    assert view.created_at == 100.0 and view.progress == {}


def test_the_record_keeps_segments_audio_and_codecs():
    record = fold(HISTORY)
    assert sorted(record.segments, key=int) == ["0", "1", "2", "3"]
    assert record.segments["2"].sizes == {"720p": 10, "360p": 10} and record.segments["2"].start == 12.0
    assert sorted(record.audio_segments, key=int) == ["0", "1", "2", "3"]
    assert record.codecs == {"720p": "avc1.64001f", "360p": "avc1.4d401e", topology.AUDIO_TRACK: "mp4a.40.2"}
    # what a storage quota counts: source, MP4s, thumbnail and every fragment
    assert record.stored_bytes() == 10 + 5 + 3 + 7 + 4 * 2 * 10 + 4 * 2


def test_ready_waits_for_every_planned_rendition():
    """A ready event never makes a video ready while a rendition it stands for is missing:
    encoded fragments are not a rendition until the stitch stored its MP4."""
    partial = fold([UPLOADED, PLANNED, CHUNK_0, CHUNK_1, AUDIO, STITCHED_360, THUMB])
    with pytest.raises(Incomplete, match="720p"):
        apply(partial, READY, 1)
    assert apply(apply(partial, STITCHED_720, 1), READY, 2).status == "ready"


def test_ready_waits_for_the_thumbnail():
    partial = fold([UPLOADED, PLANNED, CHUNK_0, CHUNK_1, AUDIO, STITCHED_360, STITCHED_720])
    with pytest.raises(Incomplete):
        apply(partial, READY, 1)


def test_a_rendition_is_visible_once_stitched_before_the_video_is_ready():
    encoded = fold([UPLOADED, PLANNED, CHUNK_0, CHUNK_1, AUDIO])
    assert to_view(encoded).renditions == []  # fragments alone are no download
    view = to_view(apply(encoded, STITCHED_360, 1))
    assert view.status == "processing"
    assert [r.name for r in view.renditions] == ["360p"]
    assert view.progress["360p"] == 100.0 and view.progress["720p"] < 100.0


def test_any_order_of_events_gives_the_same_state():
    expected = fold(HISTORY)
    orders = list(itertools.permutations(HISTORY[:6]))  # every order of the first six ...
    rng = random.Random(7)
    orders += [rng.sample(HISTORY, len(HISTORY)) for _ in range(3000)]  # ... and many of all nine
    for order in orders:
        events = list(order) + [e for e in HISTORY if e not in order]
        assert fold(events) == expected, [type(e).__name__ for e in events]


def test_replayed_events_change_nothing():
    record = fold([UPLOADED, PLANNED, progress(1, 1), CHUNK_0, AUDIO, STITCHED_360])
    for event in (UPLOADED, PLANNED, progress(1, 1), CHUNK_0, AUDIO, STITCHED_360):
        assert apply(record, event, 999.0) is None, event


def test_the_record_keeps_the_stream_sequence_of_the_latest_event_folded_in():
    uploaded = apply(None, UPLOADED, 1.0, seq=10)
    assert uploaded.seq == 10 and uploaded.holds(10) and not uploaded.holds(11)
    planned = apply(uploaded, PLANNED, 2.0, seq=12)
    assert planned.seq == 12
    # a redelivered older event changes nothing, its sequence included
    assert apply(planned, UPLOADED, 3.0, seq=10) is None
    # an event that changes nothing else still records that it is in: a caller waits for it
    task_failed = TaskFailed(video_id=V, tenant=T, task="thumbnail", error=ErrorInfo(code="x", message="y"))
    noted = apply(planned, task_failed, 4.0, seq=30)
    assert noted is not None and noted.seq == 30
    assert msgspec.structs.replace(noted, seq=planned.seq) == planned  # nothing else changed
    assert apply(noted, task_failed, 5.0, seq=30) is None
    # without a sequence (a test folding events by hand) the record keeps the one it has
    assert apply(planned, THUMB, 6.0).seq == 12


def test_progress_is_the_share_of_segments_encoded_for_every_rendition():
    planned = fold([UPLOADED, PLANNED])
    assert to_view(planned).progress == {"720p": 0.0, "360p": 0.0}
    # chunk 1 finished one of its two segments: 1 of 4
    one = apply(planned, progress(1, 1), 1)
    assert to_view(one).progress == {"720p": 25.0, "360p": 25.0}
    # chunk 0 encoded whole (2) + chunk 1's one: 3 of 4
    three = apply(one, CHUNK_0, 2)
    assert to_view(three).progress == {"720p": 75.0, "360p": 75.0}
    # every segment encoded, nothing stitched: not 100 yet (the MP4s are still to come)
    four = apply(three, CHUNK_1, 3)
    assert all(99 < p < 100 for p in to_view(four).progress.values()), to_view(four).progress
    stitched = apply(four, STITCHED_720, 4)
    assert to_view(stitched).progress["720p"] == 100.0 and to_view(stitched).progress["360p"] < 100.0


def test_progress_arriving_before_the_plan_counts_once_the_plan_is_known():
    early = fold([UPLOADED, progress(0, 1)])
    assert to_view(apply(early, PLANNED, 1)).progress == {"720p": 25.0, "360p": 25.0}


def test_progress_only_moves_forward_and_stops_at_terminal():
    record = fold([UPLOADED, PLANNED, progress(1, 1)])
    assert apply(record, progress(1, 1), 1) is None  # the same sample again
    assert apply(record, progress(1, 0), 1) is None  # a late, older sample
    done = apply(record, CHUNK_0, 1)
    assert apply(done, progress(0, 1), 2) is None  # a sample of a chunk already encoded
    ready = fold(HISTORY)
    assert apply(ready, progress(1, 2), 1) is None
    assert to_view(ready).progress == {}


def test_failed_keeps_its_reason_and_delete_wins_over_everything():
    failed = fold(
        [UPLOADED, PLANNED, VideoFailed(video_id=V, tenant=T, error=ErrorInfo(code="bad_media", message="x"))]
    )
    assert failed.status == "failed" and failed.error.code == "bad_media"
    assert apply(failed, progress(0, 1), 1) is None
    assert to_view(failed).progress == {}
    for event in (CHUNK_0, CHUNK_1, AUDIO, STITCHED_360, STITCHED_720, THUMB):  # its failed task was replayed
        failed = apply(failed, event, 1) or failed
    recovered = apply(failed, READY, 1)
    assert recovered.status == "ready" and recovered.error is None
    assert apply(recovered, VideoFailed(video_id=V, tenant=T, error=ErrorInfo(code="x", message="y")), 2) is None

    deleted = fold([UPLOADED, PLANNED, CHUNK_0, STITCHED_360, VideoDeleted(video_id=V, tenant=T), READY, CHUNK_1])
    view = to_view(deleted)
    assert view.status == "deleted" and view.renditions == [] and view.thumbnail is None and view.progress == {}
    assert deleted.stored_bytes() == 0


def test_hls_plays_while_processing_and_ready_but_not_once_failed_or_deleted():
    playable = fold([UPLOADED, PLANNED, CHUNK_0, AUDIO, VideoPlayable(video_id=V, tenant=T)])
    view, playlist = to_view(playable), to_playlist(playable)
    assert view.status == "processing" and view.playable and view.playback.hls == f"/v1/videos/{V}/hls/master.m3u8"
    assert playlist.playable and [s.index for s in playlist.segments] == [0, 1]

    # a failed video's playlists would never end: it is not playable (its JSON says so too)
    failed = apply(playable, VideoFailed(video_id=V, tenant=T, error=ErrorInfo(code="bad_media", message="x")), 1)
    assert not to_view(failed).playable and to_view(failed).playback is None
    assert not to_playlist(failed).playable and to_playlist(failed).segments == []
    # ... unless its failed task is replayed and it ends ready after all
    for event in (CHUNK_1, STITCHED_360, STITCHED_720, THUMB, READY):
        failed = apply(failed, event, 2) or failed
    assert failed.status == "ready" and to_view(failed).playable and to_playlist(failed).playable

    deleted = apply(playable, VideoDeleted(video_id=V, tenant=T), 3)
    assert not to_view(deleted).playable and not to_playlist(deleted).playable


def test_objects_of_a_video_include_every_cmaf_fragment():
    record = fold(HISTORY)
    expected = {"o720", "o360", "othumb", "acme/01abc/source"}
    for track in ("720p", "360p", topology.AUDIO_TRACK):
        expected.add(topology.init_key(T, V, track))
        expected |= {topology.segment_key(T, V, track, i) for i in range(4)}
    assert set(record.objects()) == expected
    assert len(record.objects()) == len(expected)  # each once
    # deleted halfway: what was stored so far, so nothing is orphaned
    half = fold([UPLOADED, PLANNED, CHUNK_0, VideoDeleted(video_id=V, tenant=T)])
    assert set(half.objects()) == {"acme/01abc/source"} | {
        key
        for track in ("720p", "360p")
        for key in (topology.init_key(T, V, track), *(topology.segment_key(T, V, track, i) for i in (0, 1)))
    }


def test_warnings_show_as_tasks_report_them_and_as_the_ready_event_lists_them():
    from msgspec.structs import replace

    from shared.contracts import WarningInfo

    cut = WarningInfo(
        code="truncated",
        message="chunk:1: the video ends at 20.00 s of the 720.00 s its file declares (700.00 s missing)",
    )
    damaged = WarningInfo(code="damaged_packets", message="audio: 1 undecodable audio packet was skipped")
    history = [UPLOADED, PLANNED, CHUNK_0, replace(CHUNK_1, warnings=[cut]), replace(AUDIO, warnings=[damaged])]
    processing = to_view(fold(history))
    assert processing.status == "processing" and processing.warnings == [cut, damaged]
    ready = to_view(fold(history + [STITCHED_360, STITCHED_720, THUMB, replace(READY, warnings=[cut, damaged])]))
    assert ready.status == "ready" and ready.warnings == [cut, damaged]
    assert to_view(fold(HISTORY)).warnings == []  # a clean video has none
    assert to_view(fold(history + [VideoDeleted(video_id=V, tenant=T)])).warnings == []

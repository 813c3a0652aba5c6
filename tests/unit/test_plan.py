"""How the pipeline cuts a video: chunks on the segment grid, one chunk when it cannot cut,
and the task names and messages of a plan."""

from __future__ import annotations

import pytest

from services.pipeline.plan import plan_video
from shared.contracts import (
    AUDIO_TASK,
    STITCH_TASK,
    THUMBNAIL_TASK,
    EncodeAudio,
    EncodeChunk,
    ExtractThumbnail,
    SourceInfo,
    StitchRenditions,
    chunk_index,
    chunk_task,
)


def source(duration: float | None, *, cuttable: bool = True, audio: bool = True, **kw) -> SourceInfo:
    return SourceInfo(
        size=1000,
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=duration,
        width=1280,
        height=720,
        audio_codec="aac" if audio else None,
        cuttable=cuttable,
        **kw,
    )


def spans(plan) -> list[tuple[int, float, float | None, int]]:
    return [(c.index, c.start, c.end, c.first_segment) for c in plan.chunks]


def test_chunks_start_on_multiples_of_the_segment_and_cover_the_timeline():
    plan = plan_video(source(20.0), chunk_s=4.0, segment_s=2.0)
    assert spans(plan) == [
        (0, 0.0, 4.0, 0),
        (1, 4.0, 8.0, 2),
        (2, 8.0, 12.0, 4),
        (3, 12.0, 16.0, 6),
        (4, 16.0, None, 8),
    ]
    assert plan.segments == 10 and plan.segment_s == 2.0
    for c in plan.chunks:
        assert c.start == c.first_segment * plan.segment_s
        assert (c.start / plan.segment_s).is_integer()
    # contiguous: each chunk ends where the next starts, the last takes whatever is left
    assert [c.end for c in plan.chunks[:-1]] == [c.start for c in plan.chunks[1:]]
    assert plan.chunks[-1].end is None


@pytest.mark.parametrize(
    "duration, chunks",
    [
        (12.0, 2),  # exactly two chunks
        (12.9, 2),  # 0.9 s left over: less than half a segment, joins chunk 1
        (13.1, 3),  # 1.1 s: more than half a segment, a chunk of its own
        (6.5, 1),
        (0.4, 1),  # shorter than half a segment: still one chunk, never none
    ],
)
def test_a_remainder_under_half_a_segment_joins_the_previous_chunk(duration, chunks):
    plan = plan_video(source(duration), chunk_s=6.0, segment_s=2.0)
    assert len(plan.chunks) == chunks, spans(plan)
    assert plan.chunks[-1].end is None
    assert plan.chunks[-1].start < duration or chunks == 1


def test_an_uncuttable_source_is_one_chunk():
    plan = plan_video(source(60.0, cuttable=False), chunk_s=6.0, segment_s=6.0)
    assert spans(plan) == [(0, 0.0, None, 0)]
    assert plan.segments == 10  # the segment grid still applies inside the one chunk


def test_a_source_of_unknown_duration_is_one_chunk():
    plan = plan_video(source(None), chunk_s=6.0, segment_s=6.0)
    assert spans(plan) == [(0, 0.0, None, 0)]
    assert plan.segments == 1


def test_the_video_stream_s_own_end_decides_over_the_container_duration():
    # the audio runs 3 s past the picture: no chunk is planned for frames that do not exist
    plan = plan_video(source(15.0, video_duration=12.0), chunk_s=6.0, segment_s=6.0)
    assert len(plan.chunks) == 2 and plan.segments == 2
    assert plan.duration == 15.0  # the task messages carry the whole source's duration


@pytest.mark.parametrize(
    "chunk_s, segment_s", [(5.0, 2.0), (3.0, 6.0), (6.0, 4.0), (0.0, 2.0), (6.0, 0.0), (-6.0, 2.0)]
)
def test_a_chunk_that_is_not_a_positive_multiple_of_the_segment_is_refused(chunk_s, segment_s):
    with pytest.raises(ValueError):
        plan_video(source(30.0), chunk_s=chunk_s, segment_s=segment_s)


def test_the_plan_carries_the_ladder_rotation_and_audio():
    plan = plan_video(source(8.0, rotation=90), chunk_s=6.0, segment_s=6.0)
    assert [r.name for r in plan.renditions] == ["720p", "480p", "360p"]
    assert plan.rotation == 90 and plan.audio
    assert not plan_video(source(8.0, audio=False), chunk_s=6.0, segment_s=6.0).audio


def test_task_names_put_the_first_chunk_and_the_audio_first_and_the_stitch_last():
    plan = plan_video(source(20.0), chunk_s=6.0, segment_s=6.0)
    assert plan.task_names() == ["chunk:0", AUDIO_TASK, "chunk:1", "chunk:2", THUMBNAIL_TASK, STITCH_TASK]
    silent = plan_video(source(20.0, audio=False), chunk_s=6.0, segment_s=6.0)
    assert silent.task_names() == ["chunk:0", "chunk:1", "chunk:2", THUMBNAIL_TASK, STITCH_TASK]


def test_every_task_name_builds_its_message_and_the_message_names_its_task():
    plan = plan_video(source(20.0, rotation=180), chunk_s=6.0, segment_s=6.0)
    ids = {"video_id": "v1", "tenant": "acme", "source": "acme/v1/source"}
    kinds = {}
    for name in plan.task_names():
        msg = plan.task_message(name, **ids, segments=[0, 1, 2, 3], audio_segments=[0, 1, 2, 3], audio_priming=1024)
        assert msg.task == name and msg.video_id == "v1" and msg.tenant == "acme"
        kinds[name] = msg
    assert isinstance(kinds[THUMBNAIL_TASK], ExtractThumbnail) and kinds[THUMBNAIL_TASK].source == "acme/v1/source"
    audio = kinds[AUDIO_TASK]
    assert isinstance(audio, EncodeAudio) and audio.segment_s == 6.0 and audio.duration == 20.0
    chunk = kinds[chunk_task(2)]
    assert isinstance(chunk, EncodeChunk)
    assert chunk.chunk == plan.chunks[2] and chunk.renditions == plan.renditions
    assert (chunk.segment_s, chunk.rotation, chunk.duration, chunk.source) == (6.0, 180, 20.0, "acme/v1/source")
    stitch = kinds[STITCH_TASK]
    assert isinstance(stitch, StitchRenditions) and stitch.renditions == plan.renditions
    assert (stitch.segments, stitch.audio_segments, stitch.audio_priming) == ([0, 1, 2, 3], [0, 1, 2, 3], 1024)


def test_a_chunk_task_name_reads_back_as_its_index_and_no_other_name_does():
    assert [chunk_index(chunk_task(i)) for i in (0, 1, 12)] == [0, 1, 12]
    for name in (AUDIO_TASK, THUMBNAIL_TASK, STITCH_TASK, "chunk:", "chunk:-1", "chunk:x", "chunks:1"):
        assert chunk_index(name) is None, name


@pytest.mark.parametrize("name", ["chunk:3", "chunk:-1", "chunk:x", "transcode:720p", "nope"])
def test_a_task_the_plan_does_not_have_is_a_value_error(name):
    plan = plan_video(source(20.0), chunk_s=6.0, segment_s=6.0)
    with pytest.raises(ValueError):
        plan.task_message(name, video_id="v1", tenant="acme", source="s")


def test_a_silent_video_has_no_audio_task():
    plan = plan_video(source(20.0, audio=False), chunk_s=6.0, segment_s=6.0)
    with pytest.raises(ValueError):
        plan.task_message(AUDIO_TASK, video_id="v1", tenant="acme", source="s")

"""The pipeline's fan-in of one video (pure): the stitch waits for every chunk and the audio,
ready needs the stitch and the thumbnail, a failed task fails the video until it is replayed,
and every result can arrive twice."""

from __future__ import annotations

from services.pipeline import jobs, redrive
from services.pipeline.plan import plan_video
from shared import topology
from shared.contracts import (
    AUDIO_TASK,
    STITCH_TASK,
    THUMBNAIL_TASK,
    AudioEncoded,
    ChunkEncoded,
    ErrorInfo,
    RenditionStitched,
    SegmentInfo,
    SourceInfo,
    StitchRenditions,
    chunk_task,
)

V, T, SRC = "01abc", "acme", "acme/01abc/source"
INITS = {"720p": "a" * 64, "480p": "b" * 64, "360p": "c" * 64}


def plan(audio: bool = True):
    """1280x720, 14 s, cut in 6 s chunks of 2 s segments: chunks 0-6, 6-12 and 12-14 s."""
    src = SourceInfo(size=1, duration=14.0, width=1280, height=720, audio_codec="aac" if audio else None, cuttable=True)
    return plan_video(src, chunk_s=6.0, segment_s=2.0)


def new(audio: bool = True) -> jobs.Job:
    return jobs.new_job(V, T, SRC, plan(audio))


def chunk(i: int, inits: dict | None = None) -> ChunkEncoded:
    first = i * 3
    count = 1 if i == 2 else 3
    segments = [
        SegmentInfo(index=s, start=2.0 * s, duration=2.0, sizes={r: 100 for r in INITS})
        for s in range(first, first + count)
    ]
    return ChunkEncoded(video_id=V, tenant=T, chunk=i, segments=segments, inits=INITS if inits is None else inits)


AUDIO = AudioEncoded(
    video_id=V, tenant=T, segments=[SegmentInfo(index=s, start=2.0 * s, duration=2.0) for s in range(7)], priming=1024
)


def stitched(rendition: str) -> RenditionStitched:
    return RenditionStitched(
        video_id=V,
        tenant=T,
        rendition=rendition,
        object=topology.rendition_key(T, V, rendition),
        width=2,
        height=2,
        size=1,
    )


def encoded(job: jobs.Job) -> jobs.Job:
    for i in range(3):
        job = jobs.chunk_done(job, chunk(i))
    return jobs.audio_done(job, AUDIO)


def stitch_all(job: jobs.Job) -> jobs.Job:
    for r in ("720p", "480p", "360p"):
        job = jobs.rendition_stitched(job, stitched(r))
    return job


def test_a_new_job_has_a_task_per_chunk_the_audio_and_the_thumbnail_and_a_waiting_stitch():
    job = new()
    assert job.tasks == {
        "chunk:0": "pending",
        "chunk:1": "pending",
        "chunk:2": "pending",
        AUDIO_TASK: "pending",
        THUMBNAIL_TASK: "pending",
        STITCH_TASK: "waiting",
    }
    assert job.status == "processing"
    assert jobs.task_message(job, STITCH_TASK) is None  # nothing to stitch yet
    assert set(new(audio=False).tasks) == {"chunk:0", "chunk:1", "chunk:2", THUMBNAIL_TASK, STITCH_TASK}


def test_the_stitch_waits_for_every_chunk_and_the_audio():
    job = new()
    for event in (chunk(2), chunk(0), AUDIO):  # any order; chunk 1 still out
        job = jobs.chunk_done(job, event) if isinstance(event, ChunkEncoded) else jobs.audio_done(job, event)
        assert job.tasks[STITCH_TASK] == "waiting", job.tasks
    job = jobs.chunk_done(job, chunk(1))
    assert job.tasks[STITCH_TASK] == "pending" and job.status == "processing"
    msg = jobs.task_message(job, STITCH_TASK)
    assert isinstance(msg, StitchRenditions)
    assert msg.segments == list(range(7))  # every stored segment, in timeline order
    assert (msg.audio_segments, msg.audio_priming) == (list(range(7)), 1024)
    assert [r.name for r in msg.renditions] == ["720p", "480p", "360p"]


def test_the_stitch_waits_for_the_audio_last():
    job = new()
    for i in range(3):
        job = jobs.chunk_done(job, chunk(i))
    assert job.tasks[STITCH_TASK] == "waiting"
    job = jobs.audio_done(job, AUDIO)
    assert job.tasks[STITCH_TASK] == "pending"


def test_a_silent_video_stitches_when_the_chunks_are_in():
    job = new(audio=False)
    for i in range(3):
        job = jobs.chunk_done(job, chunk(i))
    assert job.tasks[STITCH_TASK] == "pending"
    assert jobs.task_message(job, STITCH_TASK).audio_segments == []


def test_ready_needs_every_rendition_stitched_and_the_thumbnail():
    job = encoded(new())
    job = jobs.rendition_stitched(job, stitched("720p"))
    job = jobs.rendition_stitched(job, stitched("480p"))
    assert job.tasks[STITCH_TASK] == "pending" and job.status == "processing"  # 360p still to come
    job = jobs.rendition_stitched(job, stitched("360p"))
    assert job.tasks[STITCH_TASK] == "done" and job.status == "processing"  # the thumbnail is not in
    job = jobs.task_done(job, THUMBNAIL_TASK, topology.thumbnail_key(T, V))
    assert job.status == "ready" and job.error is None
    assert sorted(job.outputs) == sorted(
        [topology.rendition_key(T, V, r) for r in ("720p", "480p", "360p")] + [topology.thumbnail_key(T, V)]
    )


def test_the_thumbnail_first_does_not_make_it_ready():
    job = jobs.task_done(new(), THUMBNAIL_TASK, "thumb")
    job = encoded(job)
    assert job.status == "processing"
    assert stitch_all(job).status == "ready"


def test_a_failed_chunk_fails_the_video_with_its_reason():
    error = ErrorInfo(code="bad_media", message="chunk:1: the source cannot be decoded")
    job = jobs.task_failed(jobs.chunk_done(new(), chunk(0)), "chunk:1", error)
    assert job.status == "failed" and job.error == error and job.tasks["chunk:1"] == "failed"
    # the other tasks still report; the video stays failed, and never reaches the stitch
    job = jobs.chunk_done(job, chunk(2))
    job = jobs.audio_done(job, AUDIO)
    job = jobs.task_done(job, THUMBNAIL_TASK, "thumb")
    assert job.status == "failed" and job.error == error
    assert job.tasks[STITCH_TASK] == "waiting"
    # a second failure does not replace the first reason
    assert jobs.task_failed(job, "chunk:2", ErrorInfo(code="x", message="y")).error == error


def test_a_chunk_replayed_after_its_failure_lets_the_video_finish():
    error = ErrorInfo(code="retries_exhausted", message="chunk:1: no worker finished it")
    job = jobs.task_failed(new(), "chunk:1", error)
    for event in (chunk(0), chunk(2), AUDIO):
        job = jobs.chunk_done(job, event) if isinstance(event, ChunkEncoded) else jobs.audio_done(job, event)
    job = jobs.task_done(job, THUMBNAIL_TASK, "thumb")
    assert job.status == "failed"
    job = jobs.chunk_done(job, chunk(1))  # the dead letter replayed, and it worked this time
    assert job.tasks[STITCH_TASK] == "pending"  # so the stitch can now be published
    assert jobs.task_message(job, STITCH_TASK).segments == list(range(7))
    job = stitch_all(job)
    assert job.status == "ready" and job.error is None


def test_an_init_segment_that_differs_between_chunks_fails_with_encode_mismatch():
    job = jobs.chunk_done(new(), chunk(0))
    odd = chunk(1, inits={**INITS, "480p": "f" * 64})
    job = jobs.chunk_done(job, odd)
    assert job.status == "failed" and job.error.code == "encode_mismatch"
    assert "chunk:1" in job.error.message and "480p" in job.error.message
    assert job.tasks["chunk:1"] == "failed"


def test_redelivered_results_change_nothing():
    job = jobs.chunk_done(new(), chunk(0))
    assert jobs.chunk_done(job, chunk(0)) == job
    job = jobs.audio_done(job, AUDIO)
    assert jobs.audio_done(job, AUDIO) == job
    job = jobs.chunk_done(jobs.chunk_done(job, chunk(1)), chunk(2))
    job = jobs.rendition_stitched(job, stitched("720p"))
    assert jobs.rendition_stitched(job, stitched("720p")) == job
    assert job.stitched == ["720p"]
    job = jobs.task_done(job, THUMBNAIL_TASK, "thumb")
    assert jobs.task_done(job, THUMBNAIL_TASK, "thumb") == job
    ready = stitch_all(job)
    assert ready.status == "ready"
    for late in (
        lambda j: jobs.chunk_done(j, chunk(1)),
        lambda j: jobs.audio_done(j, AUDIO),
        lambda j: jobs.rendition_stitched(j, stitched("360p")),
        lambda j: jobs.task_failed(j, "chunk:0", ErrorInfo(code="x", message="y")),
    ):
        assert late(ready) == ready


def test_a_result_for_a_task_the_job_does_not_have_is_ignored():
    job = new()
    stray = ChunkEncoded(video_id=V, tenant=T, chunk=9, segments=[SegmentInfo(index=27, start=54.0, duration=2.0)])
    assert jobs.chunk_done(job, stray) == job


def test_a_deleted_job_stays_deleted_and_names_every_fragment_for_clean_up():
    job = jobs.chunk_done(jobs.chunk_done(new(), chunk(0)), chunk(1))
    job = jobs.audio_done(job, AUDIO)
    gone = jobs.deleted(job)
    assert gone.status == "deleted" and jobs.deleted(gone) == gone
    assert jobs.chunk_done(gone, chunk(2)).status == "deleted"
    keys = set(jobs.media_of(gone))
    for r in ("720p", "480p", "360p"):
        assert topology.init_key(T, V, r) in keys
        assert {topology.segment_key(T, V, r, s) for s in range(6)} <= keys
    assert topology.init_key(T, V, topology.AUDIO_TRACK) in keys
    assert {topology.segment_key(T, V, topology.AUDIO_TRACK, s) for s in range(7)} <= keys
    # a late result's output is still recorded, so the pipeline can delete it
    late = jobs.rendition_stitched(gone, stitched("720p"))
    assert late.status == "deleted" and topology.rendition_key(T, V, "720p") in jobs.media_of(late)


def test_re_drive_misses_only_pending_tasks_on_no_queue():
    job = jobs.chunk_done(new(), chunk(0))
    # the finished chunk and the waiting stitch are never missing
    assert redrive.missing_tasks(job, {chunk_task(1)}) == [AUDIO_TASK, chunk_task(2), THUMBNAIL_TASK]
    assert redrive.missing_tasks(job, {chunk_task(1), chunk_task(2), AUDIO_TASK, THUMBNAIL_TASK}) == []
    job = jobs.audio_done(jobs.chunk_done(jobs.chunk_done(job, chunk(1)), chunk(2)), AUDIO)
    job = jobs.task_done(job, THUMBNAIL_TASK, "thumb")
    # once every chunk and the audio are in, the stitch is pending: it can be lost too
    assert redrive.missing_tasks(job, set()) == [STITCH_TASK]
    assert redrive.missing_tasks(job, {STITCH_TASK}) == []
    assert redrive.missing_tasks(jobs.task_failed(job, STITCH_TASK, ErrorInfo(code="x", message="x")), set()) == []


def test_warnings_of_every_task_reach_the_ready_video_in_task_order():
    from msgspec.structs import replace

    from shared.contracts import WarningInfo

    cut = WarningInfo(
        code="truncated", message="chunk:2: the video ends at 13.00 s of the 14.00 s its file declares (1.00 s missing)"
    )
    damaged = WarningInfo(code="damaged_packets", message="audio: 1 undecodable audio packet was skipped")
    early = WarningInfo(code="damaged_packets", message="chunk:0: 2 undecodable video packets were skipped")
    job = new()
    job = jobs.audio_done(job, replace(AUDIO, warnings=[damaged]))
    job = jobs.chunk_done(job, replace(chunk(2), warnings=[cut]))
    job = jobs.chunk_done(job, chunk(1))
    job = jobs.chunk_done(job, replace(chunk(0), warnings=[early]))
    assert jobs.video_warnings(job) == [early, cut, damaged]
    # a redelivered result does not count twice
    assert jobs.video_warnings(jobs.chunk_done(job, replace(chunk(0), warnings=[early]))) == [early, cut, damaged]
    assert jobs.video_warnings(new()) == []

"""Fan-in bookkeeping of one video (pure logic; stored by the pipeline in the `jobs` bucket).

A job knows its plan and its tasks: one per chunk (`chunk:<i>`), the audio, the thumbnail,
and the stitch, which waits until every chunk and the audio are in. Each task ends `done`
or `failed`. The job is `ready` when every task is done, `failed` as soon as one task
failed for good, `deleted` when the video was deleted. Transitions are idempotent. `ready`
and `deleted` are final; a `failed` job goes on when its failed task completes after all
(a dead letter replayed with `vidmesh dlq replay`) and becomes `ready` when all are done.
"""

from __future__ import annotations

import msgspec

from shared import topology
from shared.contracts import (
    AUDIO_TASK,
    STITCH_TASK,
    AudioEncoded,
    ChunkEncoded,
    ErrorInfo,
    RenditionSpec,
    RenditionStitched,
    VideoPlan,
    WarningInfo,
    chunk_index,
    chunk_task,
)

TERMINAL = ("ready", "failed", "deleted")
WAITING, PENDING, DONE, FAILED = "waiting", "pending", "done", "failed"


class Job(msgspec.Struct, frozen=True, kw_only=True):
    video_id: str
    tenant: str
    source: str
    renditions: list[RenditionSpec]
    tasks: dict[str, str]  # task name -> waiting | pending | done | failed
    status: str = "processing"
    error: ErrorInfo | None = None
    outputs: list[str] = []  # renditions and thumbnail written for this video, for clean-up
    plan: VideoPlan | None = None
    chunk_segments: dict[str, list[int]] = {}  # chunk index -> the segments it stored
    audio_segments: list[int] = []
    audio_priming: int = 0
    inits: dict[str, str] = {}  # rendition -> SHA-256 of its init segment (every chunk's must match)
    stitched: list[str] = []  # renditions whose MP4 is stored
    warnings: dict[str, list[WarningInfo]] = {}  # task -> what it warned about


job_encoder = msgspec.json.Encoder()
job_decoder = msgspec.json.Decoder(Job)


def new_job(video_id: str, tenant: str, source: str, plan: VideoPlan) -> Job:
    tasks = {name: WAITING if name == STITCH_TASK else PENDING for name in plan.task_names()}
    return Job(video_id=video_id, tenant=tenant, source=source, renditions=plan.renditions, tasks=tasks, plan=plan)


def chunk_done(job: Job, event: ChunkEncoded) -> Job:
    task = chunk_task(event.chunk)
    if job.status in ("ready", "deleted") or task not in job.tasks:
        return job
    for name, digest in event.inits.items():
        if job.inits.get(name, digest) != digest:
            error = ErrorInfo(
                code="encode_mismatch",
                message=f"{task}: its {name} init segment differs from another chunk's (the encoder settings changed)",
            )
            return task_failed(job, task, error)
    return _advance(
        msgspec.structs.replace(
            job,
            tasks={**job.tasks, task: DONE},
            chunk_segments={**job.chunk_segments, str(event.chunk): [s.index for s in event.segments]},
            inits={**job.inits, **event.inits},
            warnings=_with_warnings(job, task, event.warnings),
        )
    )


def audio_done(job: Job, event: AudioEncoded) -> Job:
    if job.status in ("ready", "deleted") or AUDIO_TASK not in job.tasks:
        return job
    return _advance(
        msgspec.structs.replace(
            job,
            tasks={**job.tasks, AUDIO_TASK: DONE},
            audio_segments=[s.index for s in event.segments],
            audio_priming=event.priming,
            warnings=_with_warnings(job, AUDIO_TASK, event.warnings),
        )
    )


def rendition_stitched(job: Job, event: RenditionStitched) -> Job:
    outputs = _with_output(job, event.object)
    if job.status in ("ready", "deleted") or STITCH_TASK not in job.tasks:
        return msgspec.structs.replace(job, outputs=outputs)
    stitched = job.stitched if event.rendition in job.stitched else [*job.stitched, event.rendition]
    tasks = job.tasks
    if {r.name for r in job.renditions} <= set(stitched):
        tasks = {**tasks, STITCH_TASK: DONE}
    return _advance(msgspec.structs.replace(job, tasks=tasks, stitched=stitched, outputs=outputs))


def task_done(job: Job, task: str, output: str | None) -> Job:
    """A task with one output (the thumbnail) is done."""
    outputs = _with_output(job, output)
    if job.status in ("ready", "deleted") or task not in job.tasks:
        return msgspec.structs.replace(job, outputs=outputs)
    return _advance(msgspec.structs.replace(job, tasks={**job.tasks, task: DONE}, outputs=outputs))


def task_failed(job: Job, task: str, error: ErrorInfo) -> Job:
    if job.status in TERMINAL:
        return job
    return msgspec.structs.replace(job, tasks={**job.tasks, task: FAILED}, status="failed", error=error)


def deleted(job: Job) -> Job:
    return job if job.status == "deleted" else msgspec.structs.replace(job, status="deleted")


def _advance(job: Job) -> Job:
    """The stitch starts when every chunk and the audio are in; the video is ready when every
    task is done."""
    tasks = job.tasks
    encodes = [state for name, state in tasks.items() if chunk_index(name) is not None or name == AUDIO_TASK]
    if tasks.get(STITCH_TASK) == WAITING and all(state == DONE for state in encodes):
        tasks = {**tasks, STITCH_TASK: PENDING}
    if all(state == DONE for state in tasks.values()):
        return msgspec.structs.replace(job, tasks=tasks, status="ready", error=None)
    return msgspec.structs.replace(job, tasks=tasks)


def _with_warnings(job: Job, task: str, warnings: list[WarningInfo]) -> dict[str, list[WarningInfo]]:
    if not warnings:
        return job.warnings
    return {**job.warnings, task: list(warnings)}


def video_warnings(job: Job) -> list[WarningInfo]:
    """Every task's warnings, in the plan's task order (chunks in timeline order, then the audio)."""

    def rank(task: str):
        index = chunk_index(task)
        return (0, index, task) if index is not None else (1, 0, task)

    return [w for task in sorted(job.warnings, key=rank) for w in job.warnings[task]]


def _with_output(job: Job, output: str | None) -> list[str]:
    return job.outputs if output is None or output in job.outputs else [*job.outputs, output]


def playable(job: Job) -> bool:
    """The first segment of every rendition (chunk 0) and the audio are stored."""
    tasks = job.tasks
    return tasks.get(chunk_task(0)) == DONE and tasks.get(AUDIO_TASK, DONE) == DONE and job.status != "deleted"


def video_segments(job: Job) -> list[int]:
    """Every stored video segment of the job, in order."""
    return sorted({index for indices in job.chunk_segments.values() for index in indices})


# --- task messages ---------------------------------------------------------------------------


def task_message(job: Job, name: str):
    """The message of one of the job's tasks (for publishing it, or publishing it again);
    None for a task the job does not have or cannot publish yet (a waiting stitch)."""
    if job.plan is None or job.tasks.get(name, WAITING) == WAITING:
        return None
    return job.plan.task_message(
        name,
        video_id=job.video_id,
        tenant=job.tenant,
        source=job.source,
        segments=video_segments(job),
        audio_segments=job.audio_segments,
        audio_priming=job.audio_priming,
    )


def media_of(job: Job) -> list[str]:
    """Every object key the job's tasks may have written (for deleting a deleted video)."""
    keys = list(job.outputs)
    track_names = [r.name for r in job.renditions]
    for name in track_names:
        keys.append(topology.init_key(job.tenant, job.video_id, name))
        keys += [topology.segment_key(job.tenant, job.video_id, name, i) for i in video_segments(job)]
    if job.plan is not None and job.plan.audio:
        keys.append(topology.init_key(job.tenant, job.video_id, topology.AUDIO_TRACK))
        keys += [topology.segment_key(job.tenant, job.video_id, topology.AUDIO_TRACK, i) for i in job.audio_segments]
    return keys

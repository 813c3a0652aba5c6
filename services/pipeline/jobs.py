"""Fan-in bookkeeping of one video (pure logic; stored by the pipeline in the `jobs` bucket).

A job knows its tasks; each task ends `done` or `failed`. The job is `ready` when every
task is done, `failed` as soon as one task failed for good, `deleted` when the video was
deleted. Transitions are idempotent. `ready` and `deleted` are final; a `failed` job
becomes `ready` only if its failed tasks complete after all (a dead letter replayed with
`vidmesh dlq replay`).
"""

from __future__ import annotations

import msgspec

from shared.contracts import ErrorInfo, RenditionSpec

TERMINAL = ("ready", "failed", "deleted")


class Job(msgspec.Struct, frozen=True, kw_only=True):
    video_id: str
    tenant: str
    source: str
    renditions: list[RenditionSpec]
    tasks: dict[str, str]  # task name -> pending | done | failed
    status: str = "processing"
    error: ErrorInfo | None = None
    outputs: list[str] = []  # object keys written for this video, for clean-up


job_encoder = msgspec.json.Encoder()
job_decoder = msgspec.json.Decoder(Job)


def transcode_task(rendition: str) -> str:
    return f"transcode:{rendition}"


THUMBNAIL_TASK = "thumbnail"


def new_job(video_id: str, tenant: str, source: str, renditions: list[RenditionSpec]) -> Job:
    tasks = {transcode_task(r.name): "pending" for r in renditions}
    tasks[THUMBNAIL_TASK] = "pending"
    return Job(video_id=video_id, tenant=tenant, source=source, renditions=renditions, tasks=tasks)


def task_done(job: Job, task: str, output: str | None) -> Job:
    outputs = job.outputs if output is None or output in job.outputs else [*job.outputs, output]
    if job.status in ("ready", "deleted") or task not in job.tasks:
        return msgspec.structs.replace(job, outputs=outputs)
    tasks = {**job.tasks, task: "done"}
    if all(state == "done" for state in tasks.values()):
        return msgspec.structs.replace(job, tasks=tasks, status="ready", error=None, outputs=outputs)
    return msgspec.structs.replace(job, tasks=tasks, outputs=outputs)


def task_failed(job: Job, task: str, error: ErrorInfo) -> Job:
    if job.status in TERMINAL:
        return job
    return msgspec.structs.replace(job, tasks={**job.tasks, task: "failed"}, status="failed", error=error)


def deleted(job: Job) -> Job:
    return job if job.status == "deleted" else msgspec.structs.replace(job, status="deleted")

"""Re-drive: the pipeline's answer to the `redrive` schedule, over its own job records.

A video `processing` whose job (the `jobs` bucket) has not changed for
VIDMESH_STUCK_AFTER_S seconds, with a pending task that is on no work queue, lost that task
(deleted from its stream, or a publish that never happened): the task is published again,
built by `jobs.task_message` as fan-out builds it. After VIDMESH_REDRIVE_MAX_ATTEMPTS
re-drives the video is failed instead, with a `TaskFailed` (code `stuck`) that fan-in folds
exactly as if a worker had given up.

A task waiting in a long queue or held by a slow worker is still in its work-queue stream (a
work queue drops a message only when it is acknowledged), so it is never taken for lost.

Idempotent, so a redelivered tick or two overlapping runs do no harm: each re-drive takes
its attempt number with compare-and-set (the `pipeline` bucket, `redrive.<tenant>.<id>`)
and the re-published tasks carry msg-ids keyed by it; a failure's msg-id is fixed.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared import topology
from shared.bus import Bus
from shared.contracts import ErrorInfo, MediaTask, TaskFailed, decoder
from shared.kvscan import entries

from . import jobs

log = logging.getLogger("vidmesh.pipeline")

ATTEMPTS_PREFIX = "redrive."  # + <tenant>.<video_id>, in the pipeline's bucket


class Attempts(msgspec.Struct, frozen=True, kw_only=True):
    """The re-drives of one stuck video so far."""

    attempts: int = 0
    last_at: float = 0.0  # unix s: the `now` of the last re-drive


attempts_decoder = msgspec.json.Decoder(Attempts)
attempts_encoder = msgspec.json.Encoder()
task_decoder = decoder(MediaTask)


def missing_tasks(job: jobs.Job, queued: set[str]) -> list[str]:
    """Pending tasks with no message on their work queue (queued or in a worker's hands)."""
    return sorted(task for task, state in job.tasks.items() if state == jobs.PENDING and task not in queued)


async def redrive(bus: Bus, now: float) -> dict:
    """Publish again the lost tasks of every stuck video, or fail the video after the last
    attempt. `now` is the tick's time (unix s). Returns the run's counts."""
    settings = bus.settings
    kv = await bus.kv(topology.KV_PIPELINE)
    summary = {"processing": 0, "stuck": 0, "republished": 0, "failed": 0}
    processing: set[str] = set()
    async for entry in entries(bus.js, topology.KV_JOBS):
        try:
            job = jobs.job_decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if job.status != "processing":
            continue
        key = topology.state_key(job.tenant, job.video_id)
        processing.add(key)
        summary["processing"] += 1
        # the job record changes with every task result: its age is the time without progress
        if now - entry.created.timestamp() < settings.stuck_after_s:
            continue
        missing = missing_tasks(job, await queued_tasks(bus, job))
        if not missing:
            continue
        summary["stuck"] += 1
        attempt = await _take_attempt(kv, key, now, settings.stuck_after_s)
        if attempt is None:
            continue  # re-driven recently (or by an overlapping run): give it time
        if attempt > settings.redrive_max_attempts:
            error = ErrorInfo(
                code="stuck",
                message=f"{missing[0]}: no progress for {settings.stuck_after_s:g}s after "
                f"{settings.redrive_max_attempts} re-drives",
            )
            failed = TaskFailed(video_id=job.video_id, tenant=job.tenant, task=missing[0], error=error)
            await bus.publish(failed, msg_id=f"{job.video_id}:{missing[0]}:stuck")
            summary["failed"] += 1
            log.warning("re-drive: %s/%s is stuck on %s: failed", job.tenant, job.video_id, missing)
            continue
        for name in missing:
            try:
                task = jobs.task_message(job, name)
            except ValueError:
                task = None
            if task is None:
                log.warning("re-drive: cannot build task %r of %s", name, job.video_id)
                continue
            await bus.publish(task, msg_id=f"{job.video_id}:{name}:redrive{attempt}")
            summary["republished"] += 1
        log.warning("re-drive %d of %s/%s: published %s again", attempt, job.tenant, job.video_id, missing)
    await _forget_finished(bus, kv, processing)
    return summary


async def queued_tasks(bus: Bus, job: jobs.Job) -> set[str]:
    """The names of the tasks of `job` that have a message on their work queue."""
    found: set[str] = set()
    for stream in topology.MEDIA_TASK_STREAMS:
        subject = f"*.cmd.*.{job.tenant}.{job.video_id}"
        seq = 1
        while True:
            try:
                msg = await bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            try:
                found.add(task_decoder.decode(msg.data).task)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
            seq = msg.seq + 1
    return found


async def _take_attempt(kv, key: str, now: float, min_gap_s: float) -> int | None:
    """The next re-drive attempt number for a video (compare-and-set), or None when it was
    re-driven less than `min_gap_s` seconds before `now` or another run took this attempt."""
    attempts_key = ATTEMPTS_PREFIX + key
    try:
        entry = await kv.get(attempts_key)
        state = attempts_decoder.decode(entry.value)
    except KeyNotFoundError:
        entry, state = None, Attempts()
    if state.attempts and now - state.last_at < min_gap_s:
        return None
    new = Attempts(attempts=state.attempts + 1, last_at=now)
    try:
        if entry is None:
            await kv.create(attempts_key, attempts_encoder.encode(new))
        else:
            await kv.update(attempts_key, attempts_encoder.encode(new), last=entry.revision)
    except KeyWrongLastSequenceError:
        return None
    return new.attempts


async def _forget_finished(bus: Bus, kv, processing: set[str]) -> None:
    """Drop the attempt counts of videos no longer processing."""
    async for entry in entries(bus.js, topology.KV_PIPELINE, ATTEMPTS_PREFIX + ">", meta_only=True):
        if entry.key[len(ATTEMPTS_PREFIX) :] not in processing:
            try:
                await kv.delete(entry.key)
            except Exception:
                pass  # best effort: it is retried on the next run

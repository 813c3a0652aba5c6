"""pipeline: probe at upload (request-reply), fan-out of the rendition ladder, fan-in to ready,
and the re-drive of its stuck jobs when the `redrive` schedule ticks (redrive.py).

Every step is idempotent: the job is created once (KV create), tasks and terminal events
carry stable `Nats-Msg-Id`s, and task results are folded into the job with compare-and-set.
"""

from __future__ import annotations

import logging
import os
import tempfile

import msgspec
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from media.problems import MediaError
from shared import contracts, runs, telemetry, topology
from shared.bus import Bus, KvContention, kv_update
from shared.consumer import Delivery, Poison, Retry, dead_letter
from shared.service import Service

from . import declaration, jobs, redrive
from .plan import plan_video
from .probe import probe_isolated
from .settings import PipelineSettings

log = logging.getLogger("vidmesh.pipeline")
service = Service(declaration.DECLARATION, settings=PipelineSettings)

CAS_ATTEMPTS = 20


@service.endpoint(topology.RPC_PIPELINE_PROBE, concurrency=2)
async def probe_source(req: contracts.ProbeSource, bus: Bus) -> contracts.Probed:
    """Probe a stored upload; refusals are data (Probed.error), not transport errors.

    A demuxer needs the header at the start and, for MP4 written without faststart, the
    index at the end: the first probe fetches only both ends (a sparse file of the upload's
    size), which spares fetching a large upload's middle. Only a success is trusted from it;
    if it fails, the whole upload is fetched and the verdict comes from probing that."""
    settings = bus.settings
    window = settings.probe_window_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="vidmesh-probe-", dir=settings.tmp_dir) as tmp:
        path = os.path.join(tmp, "source")
        for ends in (window, None):
            try:
                with telemetry.tracer.start_as_current_span(
                    "download upload", attributes={"vidmesh.probe.ends": ends or 0}
                ):
                    info = await bus.media.download(req.object, path, ends=ends)
            except FileNotFoundError:
                missing = contracts.ErrorInfo(code="not_found", message="the upload is not in the object store")
                return contracts.Probed(error=missing)
            try:
                return contracts.Probed(source=await _probe(path, req, settings))
            except MediaError as exc:
                if ends is None or info.size <= 2 * ends:  # the whole upload was probed
                    return contracts.Probed(error=contracts.ErrorInfo(code=exc.code, message=exc.message))
                log.info("probe of the ends of %s failed (%s): probing the whole upload", req.object, exc.code)


async def _probe(path: str, req: contracts.ProbeSource, settings) -> contracts.SourceInfo:
    with telemetry.tracer.start_as_current_span("probe", attributes={"vidmesh.video.id": req.video_id}):
        # in a child process with bounded memory, CPU and time (probe.py)
        return await probe_isolated(
            path,
            timeout_s=settings.probe_timeout_s,
            max_memory_mb=settings.probe_max_memory_mb,
            **settings.upload_limits(),
        )


@service.consumer(declaration.EVENTS, contracts.Event)
async def on_event(event, delivery: Delivery) -> None:
    bus = delivery.bus
    if isinstance(event, contracts.VideoUploaded):
        await fan_out(bus, event)
    elif isinstance(event, contracts.ChunkEncoded):
        await fan_in(bus, event, lambda job: jobs.chunk_done(job, event))
    elif isinstance(event, contracts.AudioEncoded):
        await fan_in(bus, event, lambda job: jobs.audio_done(job, event))
    elif isinstance(event, contracts.RenditionStitched):
        await fan_in(bus, event, lambda job: jobs.rendition_stitched(job, event))
    elif isinstance(event, contracts.ThumbnailExtracted):
        await fan_in(bus, event, lambda job: jobs.task_done(job, contracts.THUMBNAIL_TASK, event.object))
    elif isinstance(event, contracts.TaskFailed):
        await fan_in(bus, event, lambda job: jobs.task_failed(job, event.task, event.error))
    elif isinstance(event, contracts.VideoDeleted):
        await fan_in(bus, event, jobs.deleted)


@service.consumer(declaration.EXHAUSTED_TASKS, contracts.MaxDeliveriesAdvisory)
async def on_exhausted_task(advisory: contracts.MaxDeliveriesAdvisory, delivery: Delivery) -> None:
    """A task ran out of deliveries without an answer (its worker died every time):
    dead-letter it, take it off the work queue and fail its video instead of waiting."""
    bus = delivery.bus
    try:
        original = await bus.js.get_msg(advisory.stream, advisory.stream_seq)
    except NotFoundError:
        return  # a worker acknowledged it after all
    await dead_letter(
        bus,
        data=original.data or b"",
        headers=original.headers,
        subject=original.subject,
        stream=advisory.stream,
        consumer=advisory.consumer,
        seq=advisory.stream_seq,
        deliveries=advisory.deliveries,
        reason=f"delivered {advisory.deliveries} times without an answer (the worker crashed or hung)",
    )
    try:
        task = redrive.task_decoder.decode(original.data or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        task = None
    if task is not None:
        name = task.task
        message = f"{name}: no worker finished it in {advisory.deliveries} attempts"
        error = contracts.ErrorInfo(code="retries_exhausted", message=message)
        failed = contracts.TaskFailed(video_id=task.video_id, tenant=task.tenant, task=name, error=error)
        await bus.publish(failed, msg_id=f"{task.video_id}:{name}:failed")
    try:
        await bus.js.delete_msg(advisory.stream, advisory.stream_seq)
    except NotFoundError:
        pass


# The pipeline's scheduled jobs (topology.PIPELINE_SCHEDULES): `async def job(bus, now) -> summary`
SCHEDULED_JOBS: dict[str, runs.Job] = {"redrive": redrive.redrive}


@service.consumer(declaration.TICKS, contracts.ScheduleTick)
async def on_tick(tick: contracts.ScheduleTick, delivery: Delivery) -> None:
    """Run the job a tick fires; its run is recorded in the pipeline's bucket, where
    `vidmesh schedules` reads it."""
    job = SCHEDULED_JOBS.get(tick.name)
    if job is None:
        raise Poison("unknown_schedule", f"no pipeline job named {tick.name!r}; known: {sorted(SCHEDULED_JOBS)}")
    await runs.run_tick(tick, delivery, job, topology.KV_PIPELINE)


async def fan_out(bus: Bus, event: contracts.VideoUploaded) -> None:
    """Create the job (once) and publish its plan and its tasks: chunk 0 first, then the
    audio (the first seconds of every rendition and of the audio are the first to play),
    then the other chunks in timeline order, then the thumbnail."""
    settings = bus.settings
    plan = plan_video(event.source, chunk_s=settings.chunk_s, segment_s=settings.segment_s)
    job = jobs.new_job(event.video_id, event.tenant, event.object, plan)
    kv = await bus.kv(topology.KV_JOBS)
    key = topology.state_key(event.tenant, event.video_id)
    try:
        await kv.create(key, jobs.job_encoder.encode(job))
    except KeyWrongLastSequenceError:
        job = jobs.job_decoder.decode((await kv.get(key)).value)  # redelivery: job exists
    if job.status != "processing" or job.plan is None:
        return
    plan = job.plan
    planned = contracts.VideoPlanned(
        video_id=event.video_id,
        tenant=event.tenant,
        renditions=plan.renditions,
        chunks=len(plan.chunks),
        segments=plan.segments,
        segment_s=plan.segment_s,
        audio=plan.audio,
    )
    await bus.publish(planned, msg_id=f"{event.video_id}:planned")
    for name in plan.task_names():
        task = jobs.task_message(job, name)
        if task is not None:
            await bus.publish(task, msg_id=f"{event.video_id}:{name}")


async def fan_in(bus: Bus, event, change) -> None:
    """Fold a task outcome into the job (CAS), then announce a terminal state if reached."""
    kv = await bus.kv(topology.KV_JOBS)
    key = topology.state_key(event.tenant, event.video_id)
    folded: jobs.Job | None = None  # None: a tombstone was created, there is nothing to announce

    def fold(value: bytes | None):
        nonlocal folded
        if value is None:
            if isinstance(event, contracts.VideoDeleted):
                # Deleted before its job existed: leave a tombstone so a late upload is not run.
                folded = None
                tomb = jobs.Job(video_id=event.video_id, tenant=event.tenant, source="", renditions=[], tasks={})
                return jobs.job_encoder.encode(jobs.deleted(tomb)), bus.settings.tombstone_ttl_s
            raise Retry(f"no job for {key} yet", delay=2.0)
        job = jobs.job_decoder.decode(value)
        folded = change(job)
        if folded == job:
            return None
        ttl = bus.settings.tombstone_ttl_s if folded.status == "deleted" else None
        return jobs.job_encoder.encode(folded), ttl

    try:
        await kv_update(kv, key, fold, attempts=CAS_ATTEMPTS)
    except KvContention:
        raise Retry(f"contention on {key}") from None
    if folded is not None:
        await _announce(bus, folded, event)


async def _announce(bus: Bus, job: jobs.Job, event) -> None:
    # Re-announcing on redelivery is safe: the msg-id makes JetStream drop the duplicate.
    if job.status == "deleted":
        # Media written by tasks that finished after the delete would otherwise be orphaned.
        for name in jobs.media_of(job) + _written_by(event, job):
            await bus.media.delete(name)
        return
    opens = isinstance(event, contracts.AudioEncoded) or (
        isinstance(event, contracts.ChunkEncoded) and event.chunk == 0
    )
    if opens and jobs.playable(job):
        # Chunk 0 and the audio make it playable, whichever comes second.
        playable = contracts.VideoPlayable(video_id=job.video_id, tenant=job.tenant)
        await bus.publish(playable, msg_id=f"{job.video_id}:playable")
    stitch = contracts.STITCH_TASK
    if job.tasks.get(stitch) == jobs.PENDING and isinstance(event, (contracts.ChunkEncoded, contracts.AudioEncoded)):
        # Only the last chunk or audio result moves the stitch to pending; a redelivery of it
        # publishes the same task again, which JetStream drops as a duplicate.
        await bus.publish(jobs.task_message(job, stitch), msg_id=f"{job.video_id}:{stitch}")
    if job.status == "ready":
        ready = contracts.VideoReady(video_id=job.video_id, tenant=job.tenant, warnings=jobs.video_warnings(job))
        await bus.publish(ready, msg_id=f"{job.video_id}:ready")
    elif job.status == "failed" and job.error is not None:
        failed = contracts.VideoFailed(video_id=job.video_id, tenant=job.tenant, error=job.error)
        await bus.publish(failed, msg_id=f"{job.video_id}:failed")


def _written_by(event, job: jobs.Job) -> list[str]:
    """The object keys a task result names (a late result of a deleted video)."""
    if isinstance(event, (contracts.RenditionStitched, contracts.ThumbnailExtracted)):
        return [event.object]
    if isinstance(event, contracts.ChunkEncoded):
        keys = [topology.segment_key(event.tenant, event.video_id, r, s.index) for s in event.segments for r in s.sizes]
        if event.chunk == 0:
            keys += [topology.init_key(event.tenant, event.video_id, r) for r in event.inits]
        return keys
    if isinstance(event, contracts.AudioEncoded):
        track = topology.AUDIO_TRACK
        keys = [topology.segment_key(event.tenant, event.video_id, track, s.index) for s in event.segments]
        return keys + [topology.init_key(event.tenant, event.video_id, track)] if event.segments else keys
    return []

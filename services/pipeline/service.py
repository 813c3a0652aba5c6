"""pipeline: probe at upload (request-reply), fan-out of the rendition ladder, fan-in to ready.

Every step is idempotent: the job is created once (KV create), tasks and terminal events
carry stable `Nats-Msg-Id`s, and task results are folded into the job with compare-and-set.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Union

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared import telemetry, topology
from shared.bus import Bus, kv_write
from shared.consumer import Delivery, Retry, dead_letter
from shared.contracts import (
    ErrorInfo,
    Event,
    ExtractThumbnail,
    MaxDeliveriesAdvisory,
    ProbeSource,
    Probed,
    RenditionTranscoded,
    SourceInfo,
    TaskFailed,
    ThumbnailExtracted,
    TranscodeRendition,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
    decoder,
)
from shared.service import Service

from . import jobs
from .ladder import plan_ladder
from .probe import ProbeError, probe_isolated

log = logging.getLogger("vidmesh.pipeline")
service = Service("pipeline", "Probe uploads, fan out renditions and a thumbnail, fan in")

CAS_ATTEMPTS = 20


@service.endpoint(topology.RPC_PIPELINE_PROBE, ProbeSource, concurrency=2)
async def probe_source(req: ProbeSource, bus: Bus) -> Probed:
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
                with telemetry.tracer.start_as_current_span("download upload", attributes={"vidmesh.probe.ends": ends or 0}):
                    info = await bus.media.download(req.object, path, ends=ends)
            except FileNotFoundError:
                return Probed(error=ErrorInfo(code="not_found", message="the upload is not in the object store"))
            try:
                return Probed(source=await _probe(path, req, settings))
            except ProbeError as exc:
                if ends is None or info.size <= 2 * ends:  # the whole upload was probed
                    return Probed(error=ErrorInfo(code=exc.code, message=exc.message))
                log.info("probe of the ends of %s failed (%s): probing the whole upload", req.object, exc.code)


async def _probe(path: str, req: ProbeSource, settings) -> SourceInfo:
    with telemetry.tracer.start_as_current_span("probe", attributes={"vidmesh.video.id": req.video_id}):
        # in a child process with bounded memory, CPU and time (probe.py)
        return await probe_isolated(
            path,
            timeout_s=settings.probe_timeout_s,
            max_memory_mb=settings.probe_max_memory_mb,
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_duration_s=settings.max_duration_s,
            max_streams=settings.max_streams,
            containers=settings.containers,
        )


@service.consumer(topology.PIPELINE_EVENTS, Event)
async def on_event(event, delivery: Delivery) -> None:
    bus = delivery.bus
    if isinstance(event, VideoUploaded):
        await fan_out(bus, event)
    elif isinstance(event, RenditionTranscoded):
        await fan_in(bus, event, lambda job: jobs.task_done(job, jobs.transcode_task(event.rendition), event.object))
    elif isinstance(event, ThumbnailExtracted):
        await fan_in(bus, event, lambda job: jobs.task_done(job, jobs.THUMBNAIL_TASK, event.object))
    elif isinstance(event, TaskFailed):
        await fan_in(bus, event, lambda job: jobs.task_failed(job, event.task, event.error))
    elif isinstance(event, VideoDeleted):
        await fan_in(bus, event, jobs.deleted)


TASKS = decoder(Union[TranscodeRendition, ExtractThumbnail])


@service.consumer(topology.EXHAUSTED_TASKS, MaxDeliveriesAdvisory)
async def on_exhausted_task(advisory: MaxDeliveriesAdvisory, delivery: Delivery) -> None:
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
        task = TASKS.decode(original.data or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        task = None
    if task is not None:
        name = jobs.THUMBNAIL_TASK if isinstance(task, ExtractThumbnail) else jobs.transcode_task(task.rendition.name)
        error = ErrorInfo(code="retries_exhausted", message=f"{name}: no worker finished it in {advisory.deliveries} attempts")
        failed = TaskFailed(video_id=task.video_id, tenant=task.tenant, task=name, error=error)
        await bus.publish(failed, msg_id=f"{task.video_id}:{name}:failed")
    try:
        await bus.js.delete_msg(advisory.stream, advisory.stream_seq)
    except NotFoundError:
        pass


async def fan_out(bus: Bus, event: VideoUploaded) -> None:
    source = event.source
    renditions = plan_ladder(source.width, source.height)
    job = jobs.new_job(event.video_id, event.tenant, event.object, renditions)
    kv = await bus.kv(topology.KV_JOBS)
    key = topology.state_key(event.tenant, event.video_id)
    try:
        await kv.create(key, jobs.job_encoder.encode(job))
    except KeyWrongLastSequenceError:
        job = jobs.job_decoder.decode((await kv.get(key)).value)  # redelivery: job exists
    if job.status != "processing":
        return
    for spec in job.renditions:
        task = TranscodeRendition(
            video_id=event.video_id,
            tenant=event.tenant,
            source=event.object,
            rendition=spec,
            duration=source.duration,
            rotation=source.rotation,
        )
        await bus.publish(task, msg_id=f"{event.video_id}:transcode:{spec.name}")
    thumb = ExtractThumbnail(video_id=event.video_id, tenant=event.tenant, source=event.object)
    await bus.publish(thumb, msg_id=f"{event.video_id}:thumbnail")
    planned = VideoPlanned(video_id=event.video_id, tenant=event.tenant, renditions=job.renditions)
    await bus.publish(planned, msg_id=f"{event.video_id}:planned")


async def fan_in(bus: Bus, event, change) -> None:
    """Fold a task outcome into the job (CAS), then announce a terminal state if reached."""
    kv = await bus.kv(topology.KV_JOBS)
    key = topology.state_key(event.tenant, event.video_id)
    for _ in range(CAS_ATTEMPTS):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            if isinstance(event, VideoDeleted):
                # Deleted before its job existed: leave a tombstone so a late upload is not run.
                tomb = jobs.Job(video_id=event.video_id, tenant=event.tenant, source="", renditions=[], tasks={})
                try:
                    await kv_write(kv, key, jobs.job_encoder.encode(jobs.deleted(tomb)), None, ttl_s=bus.settings.tombstone_ttl_s)
                except KeyWrongLastSequenceError:
                    continue
                return
            raise Retry(f"no job for {key} yet", delay=2.0)
        job = jobs.job_decoder.decode(entry.value)
        new = change(job)
        if new != job:
            ttl = bus.settings.tombstone_ttl_s if new.status == "deleted" else None
            try:
                await kv_write(kv, key, jobs.job_encoder.encode(new), entry.revision, ttl_s=ttl)
            except KeyWrongLastSequenceError:
                continue
        await _announce(bus, new, event)
        return
    raise Retry(f"contention on {key}")


async def _announce(bus: Bus, job: jobs.Job, event) -> None:
    # Re-announcing on redelivery is safe: the msg-id makes JetStream drop the duplicate.
    if job.status == "ready":
        await bus.publish(VideoReady(video_id=job.video_id, tenant=job.tenant), msg_id=f"{job.video_id}:ready")
    elif job.status == "failed" and job.error is not None:
        failed = VideoFailed(video_id=job.video_id, tenant=job.tenant, error=job.error)
        await bus.publish(failed, msg_id=f"{job.video_id}:failed")
    elif job.status == "deleted":
        # Media written by tasks that finished after the delete would otherwise be orphaned.
        for name in job.outputs:
            await bus.media.delete(name)
        output = getattr(event, "object", None)
        if output and not isinstance(event, VideoUploaded):
            await bus.media.delete(output)

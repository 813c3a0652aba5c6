"""transcoder: one rendition per task, pulled from the TASKS_TRANSCODE work queue.

The output key is derived from the task, so a redelivered task overwrites its own output
instead of adding a second one. Progress goes out as events about once a second.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import logging

from opentelemetry import context as otel_context

from shared import telemetry, topology
from shared.consumer import Delivery, Poison, Retry
from shared.contracts import ErrorInfo, RenditionProgress, RenditionTranscoded, TaskFailed, TranscodeRendition
from shared.service import Service

from .encode import Cancelled, MediaError, transcode

log = logging.getLogger("vidmesh.transcoder")

service = Service("transcoder", "Transcode one rendition per task (H.264/AAC MP4)")


async def report_failure(task: TranscodeRendition, delivery: Delivery, exc: Exception) -> None:
    code = exc.code if isinstance(exc, Poison) else "retries_exhausted"
    failed = TaskFailed(
        video_id=task.video_id,
        tenant=task.tenant,
        task=f"transcode:{task.rendition.name}",
        error=ErrorInfo(code=code, message=f"{task.rendition.name}: {exc}"),
    )
    await delivery.bus.publish(failed, msg_id=f"{task.video_id}:transcode:{task.rendition.name}:failed")


CANCEL_POLL_S = 0.5


@service.consumer(topology.TRANSCODE_TASKS, TranscodeRendition, on_exhausted=report_failure)
async def transcode_rendition(task: TranscodeRendition, delivery: Delivery) -> None:
    bus = delivery.bus
    settings = bus.settings
    spec = task.rendition
    if await bus.video_deleted(task.tenant, task.video_id):
        log.info("dropping %s of deleted video %s", spec.name, task.video_id)
        return
    loop = asyncio.get_running_loop()
    stop = threading.Event()  # read by the encoder thread on every frame

    def on_progress(percent: float) -> None:  # encoder thread, at most about once a second
        event = RenditionProgress(video_id=task.video_id, tenant=task.tenant, rendition=spec.name, percent=percent)
        msg_id = f"{task.video_id}:{spec.name}:progress:{delivery.attempt}:{int(percent)}"
        # the thread runs in the task's trace context; carry it over to the loop
        parent = otel_context.get_current()
        asyncio.run_coroutine_threadsafe(_publish_quietly(bus, event, msg_id, parent), loop)

    async def watch_cancellation() -> None:
        while not stop.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
            if await bus.video_deleted(task.tenant, task.video_id):
                stop.set()

    with tempfile.TemporaryDirectory(prefix="vidmesh-transcode-", dir=settings.tmp_dir) as tmp:
        src, dst = os.path.join(tmp, "source"), os.path.join(tmp, f"{spec.name}.mp4")
        try:
            with telemetry.tracer.start_as_current_span("download source"):
                await bus.media.download(task.source, src)
        except FileNotFoundError:
            if await bus.video_deleted(task.tenant, task.video_id):
                return  # deleted while queued: its source went with it
            raise Poison("source_missing", "the upload is no longer in the object store") from None
        watcher = asyncio.create_task(watch_cancellation())
        try:
            with telemetry.tracer.start_as_current_span(
                "transcode", attributes={"vidmesh.rendition": spec.name, "vidmesh.preset": settings.transcode_preset}
            ):
                result = await asyncio.to_thread(
                    transcode,
                    src,
                    dst,
                    width=spec.width,
                    height=spec.height,
                    rotation=task.rotation,
                    preset=settings.transcode_preset,
                    crf=settings.transcode_crf,
                    duration=task.duration,
                    on_progress=on_progress,
                    should_stop=stop.is_set,
                )
        except asyncio.CancelledError:
            stop.set()  # shutdown: let the encoder thread notice and end
            raise
        except Cancelled:
            log.info("abandoned %s of video %s: it was deleted", spec.name, task.video_id)
            return
        except MediaError as exc:
            if exc.code == "bad_media":
                raise Poison(exc.code, exc.message) from None
            raise Retry(f"{exc.code}: {exc.message}") from None  # output side (disk, muxer)
        finally:
            stop.set()
            watcher.cancel()
        key = topology.rendition_key(task.tenant, task.video_id, spec.name)
        with telemetry.tracer.start_as_current_span("upload rendition"):
            info = await bus.media.put_file(key, dst)
    done = RenditionTranscoded(
        video_id=task.video_id,
        tenant=task.tenant,
        rendition=spec.name,
        object=key,
        width=result.width,
        height=result.height,
        size=info.size,
        duration=result.duration,
        has_audio=result.has_audio,
    )
    await bus.publish(done, msg_id=f"{task.video_id}:transcode:{spec.name}:done")


async def _publish_quietly(bus, event, msg_id: str, parent) -> None:
    token = otel_context.attach(parent)
    try:
        await bus.publish(event, msg_id=msg_id)
    except Exception:
        pass  # progress is advisory; losing one sample is fine
    finally:
        otel_context.detach(token)

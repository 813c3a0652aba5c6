"""transcoder: one rendition per task, pulled from the TASKS_TRANSCODE work queue.

The output key is derived from the task, so a redelivered task overwrites its own output
instead of adding a second one. Progress goes out as events about once a second.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time

from shared import topology
from shared.consumer import Delivery, Poison, Retry
from shared.contracts import ErrorInfo, RenditionProgress, RenditionTranscoded, TaskFailed, TranscodeRendition
from shared.service import Service

from .encode import Cancelled, MediaError, transcode

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


@service.consumer(topology.TRANSCODE_TASKS, TranscodeRendition, on_exhausted=report_failure)
async def transcode_rendition(task: TranscodeRendition, delivery: Delivery) -> None:
    bus = delivery.bus
    settings = bus.settings
    spec = task.rendition
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    last = {"t": 0.0}

    def on_progress(percent: float) -> None:  # called from the encoder thread
        now = time.monotonic()
        if now - last["t"] < 1.0 and percent < 100:
            return
        last["t"] = now
        event = RenditionProgress(video_id=task.video_id, tenant=task.tenant, rendition=spec.name, percent=percent)
        msg_id = f"{task.video_id}:{spec.name}:progress:{delivery.attempt}:{int(percent)}"
        asyncio.run_coroutine_threadsafe(_publish_quietly(bus, event, msg_id), loop)

    with tempfile.TemporaryDirectory(prefix="vidmesh-transcode-", dir=settings.tmp_dir) as tmp:
        src, dst = os.path.join(tmp, "source"), os.path.join(tmp, f"{spec.name}.mp4")
        try:
            await bus.media.download(task.source, src)
        except FileNotFoundError:
            raise Poison("source_missing", "the upload is no longer in the object store") from None
        work = asyncio.to_thread(
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
        try:
            result = await work
        except asyncio.CancelledError:
            stop.set()  # shutdown: let the encoder thread notice and end
            raise
        except MediaError as exc:
            if exc.code == "bad_media":
                raise Poison(exc.code, exc.message) from None
            raise Retry(f"{exc.code}: {exc.message}") from None  # output side (disk, muxer)
        key = topology.rendition_key(task.tenant, task.video_id, spec.name)
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


async def _publish_quietly(bus, event, msg_id: str) -> None:
    try:
        await bus.publish(event, msg_id=msg_id)
    except Exception:
        pass  # progress is advisory; losing one sample is fine

"""thumbnailer: the first frame of a video as a JPEG, pulled from the TASKS_THUMBNAIL queue."""

from __future__ import annotations

import asyncio
import os
import tempfile

from media.problems import MediaError
from shared import telemetry, topology
from shared.consumer import Delivery, Poison
from shared.contracts import ErrorInfo, ExtractThumbnail, TaskFailed, ThumbnailExtracted
from shared.objects import ObjectReader
from shared.service import Service

from . import declaration
from .snapshot import first_frame_jpeg

service = Service(declaration.DECLARATION)


async def report_failure(task: ExtractThumbnail, delivery: Delivery, exc: Exception) -> None:
    code = exc.code if isinstance(exc, Poison) else "retries_exhausted"
    reason = exc.reason if isinstance(exc, Poison) else str(exc)
    failed = TaskFailed(
        video_id=task.video_id,
        tenant=task.tenant,
        task=task.task,
        error=ErrorInfo(code=code, message=f"{task.task}: {reason}"),
    )
    await delivery.bus.publish(failed, msg_id=f"{task.video_id}:{task.task}:failed")


@service.consumer(declaration.TASKS, ExtractThumbnail, on_exhausted=report_failure)
async def extract_thumbnail(task: ExtractThumbnail, delivery: Delivery) -> None:
    bus = delivery.bus
    if await bus.video_deleted(task.tenant, task.video_id):
        return  # deleted while the task waited: nothing to do
    info = await bus.media.info(task.source)
    if info is None:
        if await bus.video_deleted(task.tenant, task.video_id):
            return
        raise Poison("source_missing", "the upload is no longer in the object store")
    # The demuxer reads the source straight from the object store (its header, index and
    # first packets), not a downloaded copy: a few MiB of a large upload, no scratch disk.
    source = ObjectReader(bus.media, info, asyncio.get_running_loop())
    with tempfile.TemporaryDirectory(prefix="vidmesh-thumb-", dir=bus.settings.tmp_dir) as tmp:
        dst = os.path.join(tmp, "thumbnail.jpg")
        try:
            with telemetry.tracer.start_as_current_span("extract first frame"):
                width, height = await asyncio.to_thread(
                    first_frame_jpeg, source, dst, max_width=task.max_width, background=bus.settings.alpha_background
                )
        except MediaError as exc:
            raise Poison(exc.code, exc.message) from None
        key = topology.thumbnail_key(task.tenant, task.video_id)
        with telemetry.tracer.start_as_current_span("upload thumbnail"):
            info = await bus.media.put_file(key, dst)
    done = ThumbnailExtracted(
        video_id=task.video_id, tenant=task.tenant, object=key, width=width, height=height, size=info.size
    )
    await bus.publish(done, msg_id=f"{task.video_id}:{task.task}:done")

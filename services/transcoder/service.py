"""transcoder: the media work of a video, in tasks pulled from the TASKS_TRANSCODE work queue.

- EncodeChunk: one chunk of the timeline, decoded once, encoded into every rung as CMAF
  fragments (chunk.py);
- EncodeAudio: the whole audio track into CMAF fragments on the same segment grid (audio.py);
- StitchRenditions: each rung's fragments and the audio remuxed into a faststart MP4 (stitch.py).

Outputs are keyed by the task (topology.init_key / segment_key / rendition_key), so a
redelivered task overwrites its own outputs instead of adding more. A task of a deleted
video is dropped, and one in progress stops within a second.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import context as otel_context

from media.problems import Cancelled, MediaError
from shared import contracts, telemetry, topology
from shared.consumer import Delivery, Poison, Retry
from shared.objects import ObjectReader
from shared.service import Service

from . import audio, chunk, declaration
from .settings import TranscoderSettings
from .stitch import stitch

log = logging.getLogger("vidmesh.transcoder")

service = Service(declaration.DECLARATION, settings=TranscoderSettings)

CANCEL_POLL_S = 0.5
UPLOADS_IN_FLIGHT = 8  # object-store writes of one task at once
Task = contracts.EncodeChunk | contracts.EncodeAudio | contracts.StitchRenditions


async def report_failure(task: Task, delivery: Delivery, exc: Exception) -> None:
    code = exc.code if isinstance(exc, Poison) else "retries_exhausted"
    reason = exc.reason if isinstance(exc, Poison) else str(exc)
    error = contracts.ErrorInfo(code=code, message=f"{task.task}: {reason}")
    failed = contracts.TaskFailed(video_id=task.video_id, tenant=task.tenant, task=task.task, error=error)
    await delivery.bus.publish(failed, msg_id=f"{task.video_id}:{task.task}:failed")


@service.consumer(declaration.TASKS, Task, on_exhausted=report_failure)
async def on_task(task: Task, delivery: Delivery) -> None:
    if await delivery.bus.video_deleted(task.tenant, task.video_id):
        log.info("dropping %s of deleted video %s", task.task, task.video_id)
        return
    if isinstance(task, contracts.EncodeChunk):
        await encode_chunk(task, delivery)
    elif isinstance(task, contracts.EncodeAudio):
        await encode_audio(task, delivery)
    else:
        await stitch_renditions(task, delivery)


async def encode_chunk(task: contracts.EncodeChunk, delivery: Delivery) -> None:
    bus = delivery.bus
    span = task.chunk
    grid = task.segment_s
    end_segment = None if span.end is None else round(span.end / grid)
    loop = asyncio.get_running_loop()

    def on_progress(done: int) -> None:  # encoder thread, at most about once a second
        event = contracts.ChunkProgress(video_id=task.video_id, tenant=task.tenant, chunk=span.index, segments=done)
        _publish_from_thread(bus, loop, event, f"{task.video_id}:{task.task}:progress:{delivery.attempt}:{done}")

    source = await _source(bus, task)
    if source is None:
        return
    with tempfile.TemporaryDirectory(prefix="vidmesh-chunk-", dir=bus.settings.tmp_dir) as tmp:
        attributes = {"vidmesh.chunk": span.index, "vidmesh.preset": bus.settings.transcode_preset}
        with telemetry.tracer.start_as_current_span("encode chunk", attributes=attributes):
            result = await _run_media(
                bus,
                task,
                lambda stop: chunk.encode_chunk(
                    source,
                    tmp,
                    rungs=task.renditions,
                    segment_s=grid,
                    first_segment=span.first_segment,
                    end_segment=end_segment,
                    rotation=task.rotation,
                    background=bus.settings.alpha_background,
                    preset=bus.settings.transcode_preset,
                    threads=bus.settings.x264_threads or cpu_budget(),
                    on_progress=on_progress,
                    should_stop=stop,
                ),
            )
        if result is None:
            return
        uploads = []
        for r in task.renditions:
            if span.index == 0 and result.segments:  # every chunk makes the same init: one stores it
                uploads.append((topology.init_key(task.tenant, task.video_id, r.name), chunk.init_path(tmp, r.name)))
            for seg in result.segments:
                key = topology.segment_key(task.tenant, task.video_id, r.name, seg.index)
                uploads.append((key, chunk.segment_path(tmp, r.name, seg.index)))
        with telemetry.tracer.start_as_current_span("upload fragments", attributes={"vidmesh.objects": len(uploads)}):
            await _put_files(bus, uploads)
    done = contracts.ChunkEncoded(
        video_id=task.video_id,
        tenant=task.tenant,
        chunk=span.index,
        segments=[_segment_info(s) for s in result.segments],
        inits=result.inits,
        codecs=result.codecs,
        warnings=_warnings(task, result.warnings),
    )
    await bus.publish(done, msg_id=f"{task.video_id}:{task.task}:done")


async def encode_audio(task: contracts.EncodeAudio, delivery: Delivery) -> None:
    bus = delivery.bus
    source = await _source(bus, task)
    if source is None:
        return
    with tempfile.TemporaryDirectory(prefix="vidmesh-audio-", dir=bus.settings.tmp_dir) as tmp:
        with telemetry.tracer.start_as_current_span("encode audio"):
            result = await _run_media(
                bus,
                task,
                lambda stop: audio.encode_audio(
                    source, tmp, segment_s=task.segment_s, bitrate_kbps=task.bitrate_kbps, should_stop=stop
                ),
            )
        if result is None:
            return
        track = topology.AUDIO_TRACK
        uploads = []
        if result.segments:
            uploads.append((topology.init_key(task.tenant, task.video_id, track), audio.init_path(tmp)))
        for seg in result.segments:
            uploads.append(
                (topology.segment_key(task.tenant, task.video_id, track, seg.index), audio.segment_path(tmp, seg.index))
            )
        with telemetry.tracer.start_as_current_span("upload fragments", attributes={"vidmesh.objects": len(uploads)}):
            await _put_files(bus, uploads)
    done = contracts.AudioEncoded(
        video_id=task.video_id,
        tenant=task.tenant,
        segments=[_segment_info(s) for s in result.segments],
        priming=result.priming,
        warnings=_warnings(task, result.warnings),
    )
    await bus.publish(done, msg_id=f"{task.video_id}:{task.task}:done")


async def stitch_renditions(task: contracts.StitchRenditions, delivery: Delivery) -> None:
    bus = delivery.bus
    with tempfile.TemporaryDirectory(prefix="vidmesh-stitch-", dir=bus.settings.tmp_dir) as tmp:
        sound = None
        if task.audio_segments:
            sound = os.path.join(tmp, "audio.cmaf")
            if not await _fetch_track(bus, task, topology.AUDIO_TRACK, task.audio_segments, sound):
                return
        for r in task.renditions:
            track = os.path.join(tmp, f"{r.name}.cmaf")
            if not await _fetch_track(bus, task, r.name, task.segments, track):
                return
            dst = os.path.join(tmp, f"{r.name}.mp4")
            with telemetry.tracer.start_as_current_span("stitch", attributes={"vidmesh.rendition": r.name}):
                result = await _run_media(
                    bus, task, lambda _stop: stitch(track, dst, audio=sound, audio_priming=task.audio_priming)
                )
            if result is None:
                return
            key = topology.rendition_key(task.tenant, task.video_id, r.name)
            with telemetry.tracer.start_as_current_span("upload rendition"):
                info = await bus.media.put_file(key, dst)
            os.remove(track)
            os.remove(dst)
            done = contracts.RenditionStitched(
                video_id=task.video_id,
                tenant=task.tenant,
                rendition=r.name,
                object=key,
                width=result.width,
                height=result.height,
                size=info.size,
                duration=result.duration,
                has_audio=result.has_audio,
            )
            await bus.publish(done, msg_id=f"{task.video_id}:{task.task}:{r.name}:done")


# --- helpers -------------------------------------------------------------------------------


def cpu_budget() -> int:
    """The CPUs this process may use: its container's CPU limit (cgroup v2 `cpu.max`), else
    the CPUs it may run on. x264 left to itself starts 1.5 threads per CPU it sees, and a
    pod limited to 2 CPUs on a 64-CPU node would hold frames for 96 threads per rung
    (measured: a 6 s 1080p chunk peaks at 511 MiB with 3 threads, 1279 MiB with 24)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


async def _source(bus, task):
    """The upload as a seekable file read straight from the object store (a chunk reads its
    part of the source, not the whole of it); None when the video was deleted meanwhile."""
    info = await bus.media.info(task.source)
    if info is None:
        if await bus.video_deleted(task.tenant, task.video_id):
            return None  # deleted while queued: its source went with it
        raise Poison("source_missing", "the upload is no longer in the object store")
    return ObjectReader(bus.media, info, asyncio.get_running_loop())


# What makes a video playable (its first chunk, the audio) and what finishes it (the stitch)
# run at normal priority; the other chunks on threads niced by BACKGROUND_NICE. Where
# several tasks share a machine's cores the first segments of every video come first (HLS
# starts while the rest encodes), and no core idles: nice only weighs the kernel's shares.
BACKGROUND_NICE = 10
_executors: dict[bool, ThreadPoolExecutor] = {}


def _executor(urgent: bool) -> ThreadPoolExecutor:
    if urgent not in _executors:
        init = (None, ()) if urgent else (_nice, (BACKGROUND_NICE,))
        _executors[urgent] = ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="media" if urgent else "media-bg", initializer=init[0], initargs=init[1]
        )
    return _executors[urgent]


def _nice(increment: int) -> None:
    """Lower this thread's priority; the codec threads it starts inherit it (Linux)."""
    me = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + increment))
    except OSError:
        pass


async def _run_media(bus, task, work: Callable[[Callable[[], bool]], object]):
    """Run `work(should_stop)` in a thread while watching for the video's deletion.

    Returns its result, or None when the video was deleted meanwhile (whether the media
    thread saw the flag or failed on media the delete had removed). Bad media is poison;
    other media errors (the output side: disk, muxer) are retried."""
    stop = threading.Event()  # read by the media thread on every frame

    async def watch_cancellation() -> None:
        while not stop.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
            if await bus.video_deleted(task.tenant, task.video_id):
                stop.set()

    watcher = asyncio.create_task(watch_cancellation())
    executor = _executor(urgent=not (isinstance(task, contracts.EncodeChunk) and task.chunk.index > 0))
    try:
        # in the task's context (trace), on a thread of the task's priority
        run = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(executor, run, work, stop.is_set)
    except asyncio.CancelledError:
        stop.set()  # shutdown: let the media thread notice and end
        raise
    except Cancelled:
        log.info("abandoned %s of video %s: it was deleted", task.task, task.video_id)
        return None
    except Exception as exc:
        # a delete removes the media at once: a read that fails under the media thread
        # before the watcher has noticed is the same abandonment, not a fault to retry
        if await bus.video_deleted(task.tenant, task.video_id):
            log.info("abandoned %s of video %s: it was deleted", task.task, task.video_id)
            return None
        if isinstance(exc, MediaError):
            if exc.code == "bad_media":
                raise Poison(exc.code, exc.message) from None
            raise Retry(f"{exc.code}: {exc.message}") from None
        raise
    finally:
        stop.set()
        watcher.cancel()


async def _put_files(bus, uploads: list[tuple[str, str]]) -> None:
    """Store files under their keys, a few at a time."""
    limit = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    async def put(key: str, path: str) -> None:
        async with limit:
            await bus.media.put_file(key, path)

    await asyncio.gather(*(put(key, path) for key, path in uploads))


async def _fetch_track(bus, task: contracts.StitchRenditions, track: str, segments: list[int], path: str) -> bool:
    """Write a track's init segment and its fragments, in order, into one file; False when
    the video was deleted meanwhile."""
    keys = [topology.init_key(task.tenant, task.video_id, track)]
    keys += [topology.segment_key(task.tenant, task.video_id, track, index) for index in segments]
    loop = asyncio.get_running_loop()
    with open(path, "wb") as fh:
        for key in keys:
            info = await bus.media.info(key)
            if info is None:
                if await bus.video_deleted(task.tenant, task.video_id):
                    return False
                raise Poison("fragment_missing", f"{key} is not in the object store")
            async for data in bus.media.read(info):
                await loop.run_in_executor(None, fh.write, data)
    return True


def _warnings(task, warnings) -> list[contracts.WarningInfo]:
    """Media warnings on the wire, named after the task that saw them (as failures are)."""
    return [contracts.WarningInfo(code=w.code, message=f"{task.task}: {w.message}") for w in warnings]


def _segment_info(seg) -> contracts.SegmentInfo:
    start, duration = round(seg.start, 6), round(seg.duration, 6)
    return contracts.SegmentInfo(index=seg.index, start=start, duration=duration, sizes=seg.sizes)


def _publish_from_thread(bus, loop, event, msg_id: str) -> None:
    # the thread runs in the task's trace context; carry it over to the loop
    parent = otel_context.get_current()
    asyncio.run_coroutine_threadsafe(_publish_quietly(bus, event, msg_id, parent), loop)


async def _publish_quietly(bus, event, msg_id: str, parent) -> None:
    token = otel_context.attach(parent)
    try:
        await bus.publish(event, msg_id=msg_id)
    except Exception:
        pass  # progress is advisory; losing one sample is fine
    finally:
        otel_context.detach(token)

"""The Celery app of `bench load --peer celery`: vidmesh's pipeline as a task queue,
Celery 5 tasks over Redis (broker and result backend) with a shared media folder.

A web front-end writes the upload into the shared folder and calls `upload.delay()`. Then:

- `upload` (queue `celery`): probes the file, plans the ladder with vidmesh's own
  `plan_video`, encodes the audio once (AAC, CMAF fragments on the segment grid), since
  every rendition muxes the same track and this is the design's one task per video before
  the renditions (the mesh encodes it in a task beside the video's first chunk), and fans
  out a chord;
- the chord's header: one `resize` per rendition (queue `resize`): vidmesh's
  `encode_chunk` for that rung over the whole timeline as one chunk, then `stitch` with
  the audio into the rendition's MP4; and one `thumbnail` (queue `thumbnail`):
  `first_frame_jpeg`;
- the chord's callback `done` (queue `done`) marks the video ready in Redis, where the
  front-end (here the benchmark's poller) reads a video's status.

The media calls and their arguments are the mesh's (services/transcoder/service.py,
services/thumbnailer/service.py, services/pipeline/service.py), with files on the shared
folder where the mesh reads and writes its object store; the per-task settings come from
the plan's own task messages, so both systems make the same outputs with the same work.

The probe runs where the task says: "process" is a fresh `python -m services.pipeline.probe`
per upload with the pipeline's memory, CPU and time limits (the baseline the mesh is held
to); "child" is vidmesh's `probe_isolated`, the
mesh's own call (a child forked from a fork server that has imported PyAV, same limits);
"worker" is `probe` inside the pool process, unguarded.

Configuration: the environment variable BENCH_CELERY_REDIS_URL (the benchmark sets it for
the worker; the benchmark process calls `configure`).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import msgspec
from celery import Celery, Task, chord
from celery.signals import worker_process_init

from media.problems import MediaError
from services.pipeline.plan import plan_video
from services.pipeline.probe import child_args, probe, probe_isolated, read_result
from services.pipeline.settings import PipelineSettings
from services.thumbnailer.snapshot import first_frame_jpeg
from services.transcoder import audio, chunk
from services.transcoder.service import cpu_budget
from services.transcoder.settings import TranscoderSettings
from services.transcoder.stitch import stitch
from shared.contracts import AUDIO_TASK, THUMBNAIL_TASK, RenditionSpec

REDIS_URL_ENV = "BENCH_CELERY_REDIS_URL"
STATUS_KEY = "peer:video:{}"  # a Redis hash per video: status, error, outputs (JSON)


class PeerSettings(PipelineSettings, TranscoderSettings):
    """The mesh's pipeline and transcoder settings (segment grid, probe limits, preset): the peer works as they do."""


SETTINGS = PeerSettings.load()

app = Celery("vidmesh_peer")
app.conf.update(
    # a task is acknowledged when it has finished, so a worker lost mid-task (killed, OOM)
    # leaves it to be delivered again, as the mesh's JetStream work queues do
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # each pool process reserves one task at a time: no task waits behind a busy one
    worker_prefetch_multiplier=1,
    # `done` has a queue of its own: on the default queue, behind every upload still
    # waiting there, each video's few-millisecond callback would wait for the whole backlog
    task_routes={
        "peer.resize": {"queue": "resize"},
        "peer.thumbnail": {"queue": "thumbnail"},
        "peer.done": {"queue": "done"},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def configure(redis_url: str) -> None:
    """Point the app at one Redis (broker and result backend) before its first use."""
    app.conf.update(broker_url=redis_url, result_backend=redis_url)


if os.environ.get(REDIS_URL_ENV):
    configure(os.environ[REDIS_URL_ENV])


@worker_process_init.connect
def _own_multiprocessing_identity(**_) -> None:
    """billiard makes each pool process the standard library's current process too, marked
    daemonic (multiprocessing refuses a daemonic process children) and holding billiard's
    own type of authentication key (which multiprocessing's fork server cannot send on).
    `probe_isolated` starts its probe through multiprocessing, so each pool process becomes
    an ordinary parent, as the mesh's pipeline service is: not daemonic (the probe child
    never outlives the call: it is joined, or killed on a timeout), the same key bytes in
    the standard library's type."""
    me = multiprocessing.current_process()
    me._config.update(daemon=False, authkey=multiprocessing.process.AuthenticationString(me.authkey))


def _set_status(video_id: str, status: str, **fields) -> None:
    # the result backend's own Redis client: one connection pool per worker process
    mapping = {"status": status, **{k: json.dumps(v) for k, v in fields.items()}}
    app.backend.client.hset(STATUS_KEY.format(video_id), mapping=mapping)


class VideoTask(Task):
    """A task of one video (keyword `video_id`): a task that fails for good fails its
    video, so a client sees `failed` instead of waiting for a chord that never ends."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _set_status(kwargs["video_id"], "failed", error={"task": self.name, "message": f"{type(exc).__name__}: {exc}"})


@app.task(name="peer.upload", base=VideoTask, ignore_result=True)
def upload(*, video_id: str, source: str, probe_in: str = "child") -> None:
    """Probe `source` (a file in the video's own folder), plan it, encode its audio once,
    then fan out the renditions and the thumbnail in a chord ending in `done`."""
    folder = os.path.dirname(source)
    try:
        info = _probe(source, probe_in)
    except MediaError as exc:  # a refusal is the video's answer, not a task to retry
        _set_status(video_id, "failed", error={"code": exc.code, "message": exc.message})
        return
    plan = plan_video(info, chunk_s=SETTINGS.chunk_s, segment_s=SETTINGS.segment_s)
    ids = {"video_id": video_id, "tenant": "peer", "source": source}
    sound = None
    if plan.audio:
        task = plan.task_message(AUDIO_TASK, **ids)
        result = audio.encode_audio(source, folder, segment_s=task.segment_s, bitrate_kbps=task.bitrate_kbps)
        if result.segments:
            parts = [audio.init_path(folder)] + [audio.segment_path(folder, s.index) for s in result.segments]
            sound = {"track": _concat(parts, os.path.join(folder, "audio.cmaf")), "priming": result.priming}
    thumb = plan.task_message(THUMBNAIL_TASK, **ids)
    header = [
        resize.s(
            video_id=video_id,
            source=source,
            rendition=msgspec.to_builtins(r),
            segment_s=plan.segment_s,
            rotation=plan.rotation,
            audio=sound,
        )
        for r in plan.renditions
    ]
    header.append(thumbnail.s(video_id=video_id, source=source, max_width=thumb.max_width))
    chord(header)(done.s(video_id=video_id))


@app.task(name="peer.resize", base=VideoTask)
def resize(*, video_id: str, source: str, rendition: dict, segment_s: float, rotation: int, audio: dict | None) -> dict:
    """One rendition's MP4 (`<name>.mp4` beside the source): its rung encoded over the whole
    timeline as one chunk (CMAF fragments under `fragments/<name>/`), stitched with the
    audio track. Returns the rendition's name, size (pixels, bytes) and duration (seconds)."""
    rung = msgspec.convert(rendition, RenditionSpec)
    folder = os.path.dirname(source)
    fragments = os.path.join(folder, "fragments")
    result = chunk.encode_chunk(
        source,
        fragments,
        rungs=[rung],
        segment_s=segment_s,
        first_segment=0,
        end_segment=None,
        rotation=rotation,
        background=SETTINGS.alpha_background,
        preset=SETTINGS.transcode_preset,
        threads=SETTINGS.x264_threads or cpu_budget(),
    )
    parts = [chunk.init_path(fragments, rung.name)] + [
        chunk.segment_path(fragments, rung.name, s.index) for s in result.segments
    ]
    track = _concat(parts, os.path.join(folder, f"{rung.name}.cmaf"))
    dst = os.path.join(folder, f"{rung.name}.mp4")
    out = stitch(track, dst, audio=audio["track"] if audio else None, audio_priming=audio["priming"] if audio else 0)
    os.remove(track)  # the fragments stay (HLS serves them); the joined copy was for the stitch
    return {
        "rendition": rung.name,
        "path": dst,
        "width": out.width,
        "height": out.height,
        "size": out.size,
        "duration": out.duration,
    }


@app.task(name="peer.thumbnail", base=VideoTask)
def thumbnail(*, video_id: str, source: str, max_width: int) -> dict:
    """The first frame as `thumbnail.jpg` beside the source, at most `max_width` pixels wide."""
    dst = os.path.join(os.path.dirname(source), "thumbnail.jpg")
    width, height = first_frame_jpeg(source, dst, max_width=max_width, background=SETTINGS.alpha_background)
    return {"thumbnail": dst, "width": width, "height": height}


@app.task(name="peer.done", base=VideoTask, ignore_result=True)
def done(outputs: list[dict], *, video_id: str) -> None:
    """The chord's callback: every output is written, the video is ready."""
    _set_status(video_id, "ready", outputs=outputs)


def _probe(path: str, where: str):
    limits = SETTINGS.upload_limits()
    if where == "worker":
        return probe(path, **limits)
    if where == "process":
        return _probe_in_fresh_python(path, limits)
    return asyncio.run(
        probe_isolated(path, timeout_s=SETTINGS.probe_timeout_s, max_memory_mb=SETTINGS.probe_max_memory_mb, **limits)
    )


def _probe_in_fresh_python(path: str, limits: dict):
    """The probe as a design without a fork server isolates it: `python -m
    services.pipeline.probe` per upload (a Python start and PyAV's import each time), with
    the same memory, CPU and wall-clock limits."""
    args = child_args(path, timeout_s=SETTINGS.probe_timeout_s, max_memory_mb=SETTINGS.probe_max_memory_mb, **limits)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.pipeline.probe", json.dumps(args)],
            capture_output=True,
            timeout=SETTINGS.probe_timeout_s,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )
    except subprocess.TimeoutExpired:
        raise MediaError("unreadable", f"probing took longer than {SETTINGS.probe_timeout_s:g} s") from None
    return read_result(done.stdout, done.returncode)


def _concat(parts: list[str], dst: str) -> str:
    """Join an init segment and its fragments, in order, into one track file (what the
    mesh's stitch task fetches from the object store)."""
    with open(dst, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
    return dst

"""Probe an upload: is it a video we accept, and what does it look like when displayed?

Pure PyAV: no bus, no HTTP. Every refusal is a media.problems.MediaError with a stable code
the pipeline can put on the wire.

Uploads are hostile input: the limits (container allow-list, stream count, duration,
declared picture size) are checked from the headers before any frame is decoded, and
`probe_isolated` runs the whole probe in a child process with an address-space limit
(RLIMIT_AS), a CPU-time limit and a wall-clock timeout, so a crafted file that makes the
demuxer or decoder loop or balloon costs one killed child, never the pipeline service.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import multiprocessing
import os
import sys

import av
import msgspec

from media.decoding import StreamDecoder
from media.geometry import displayed_size, rotation_of, sample_aspect_ratio
from media.problems import MediaError
from media.source import (
    ANIMATED_IMAGE_FORMATS,
    audio_stream,
    expected_end,
    first_frame,
    main_video_stream,
    open_media,
    origin,
)
from shared.contracts import SourceInfo

# FFmpeg demuxer names an upload may be read with (a token of container.format.name, e.g.
# "mov,mp4,m4a,3gp,3g2,mj2"); VIDMESH_CONTAINERS replaces them. Playlists and other
# indirections (hls, concat, ...) are not here on purpose: they make the demuxer open
# further files. Animated images (GIF, APNG, animated WebP) become silent videos; still
# images are refused.
DEFAULT_CONTAINERS = (
    "mov",
    "mp4",
    "matroska",
    "webm",
    "avi",
    "mpegts",
    "mpeg",
    "flv",
    "ogg",
    "asf",
    "mxf",
    "gif",
    "apng",
    "webp",
)

# Demuxers that open files which are not videos: ANSI/text art ("tty" takes any .txt)
# and still images. Image pipes ("png_pipe", "jpeg_pipe", ...) are matched by suffix.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf", "image2"}
# Bounded work: a real video yields its first frame within a few packets.
_MAX_PACKETS = 600
# A keyframe index that ends this long (or 3 keyframe intervals, if longer) before the
# declared end describes less than the file claims: the file is not cut into chunks.
_INDEX_SHORT_S = 10.0


def probe(
    path: str,
    *,
    max_width: int = 4096,
    max_height: int = 4096,
    max_duration_s: float = 10800.0,
    max_streams: int = 16,
    containers: tuple[str, ...] = DEFAULT_CONTAINERS,
) -> SourceInfo:
    """What an upload is, as displayed. Animated images (GIF, APNG, animated WebP) are
    videos; still images are not. Raises MediaError with a refusal's code (not_media,
    no_video_stream, unsupported_container, too_many_streams, too_large, too_long,
    unreadable)."""
    size = os.path.getsize(path)  # a missing file is the caller's bug: let OSError out
    if size == 0:
        raise MediaError("not_media", "the file is empty")
    try:
        container, fmt = open_media(path)
    except MediaError as e:
        raise MediaError("not_media", e.message) from None
    with container:
        try:
            return _inspect(container, fmt, size, max_width, max_height, max_duration_s, max_streams, containers)
        except av.error.FFmpegError as e:
            raise MediaError("unreadable", f"the video cannot be decoded ({e.strerror or e})") from None


def _inspect(container, fmt, size, max_width, max_height, max_duration_s, max_streams, containers) -> SourceInfo:
    if fmt in _NOT_VIDEO_FORMATS or fmt.endswith("_pipe"):
        raise MediaError("not_media", f"not a video (detected {fmt})")
    video = main_video_stream(container)
    if video is None and not container.streams.audio:  # e.g. a text file read as subtitles
        raise MediaError("not_media", f"not a video (detected {fmt} without audio or video)")
    if video is None:
        raise MediaError("no_video_stream", "the file has no video stream")
    if not set(fmt.split(",")) & set(containers):
        raise MediaError("unsupported_container", f"{fmt} files are not accepted; use one of {', '.join(containers)}")
    if len(container.streams) > max_streams:
        raise MediaError("too_many_streams", f"{len(container.streams)} streams is over the limit of {max_streams}")
    ctx = video.codec_context
    if not ctx.width or not ctx.height:
        raise MediaError("no_video_stream", "the video stream has no picture size")

    audio = audio_stream(container)
    video_duration = expected_end(container, video)
    duration = _duration(container, video_duration, expected_end(container, audio) if audio is not None else None)
    if duration is not None and duration > max_duration_s:
        raise MediaError("too_long", f"duration {duration:.0f} s is over the limit of {max_duration_s:.0f} s")
    # Check the declared size before decoding, so a huge frame is never allocated. The
    # rotation is only known from a frame, so here either orientation may pass.
    declared = displayed_size(ctx.width, ctx.height, sample_aspect_ratio(video), 0)
    if not _fits(declared, max_width, max_height):
        _check_size(declared[::-1], max_width, max_height)

    frame, untimed = first_frame(container, video, max_packets=_MAX_PACKETS)
    if frame is None or not frame.width or not frame.height:
        raise MediaError("unreadable", "no video frame could be decoded")
    if fmt in ANIMATED_IMAGE_FORMATS and not _has_another_frame(container, video):
        raise MediaError("not_media", f"a still image ({fmt} with one frame), not a video")
    rotation = rotation_of(frame)
    width, height = displayed_size(frame.width, frame.height, sample_aspect_ratio(video), rotation)
    _check_size((width, height), max_width, max_height)

    rate = video.average_rate or video.guessed_rate
    video_duration = video_duration or duration
    cuttable = not untimed and _cuttable(container, video, video_duration)
    return SourceInfo(
        size=size,
        container=fmt,
        duration=duration,
        width=width,
        height=height,
        fps=float(rate) if rate else None,
        video_codec="webp" if fmt == "webp" else ctx.name,  # decoded through a lossless FFV1 copy
        audio_codec=audio.codec_context.name if audio is not None else None,
        rotation=rotation,
        cuttable=cuttable,
        video_duration=video_duration,
    )


def _fits(size: tuple[int, int], max_width: int, max_height: int) -> bool:
    return size[0] <= max_width and size[1] <= max_height


def _check_size(size: tuple[int, int], max_width: int, max_height: int) -> None:
    if not _fits(size, max_width, max_height):
        raise MediaError("too_large", f"{size[0]}x{size[1]} is over the limit of {max_width}x{max_height}")


def _duration(container, video_end: float | None, audio_end: float | None) -> float | None:
    """The container's duration, unless the streams' own ends (measured from their first
    timestamps, see media.source.expected_end) say the media is shorter."""
    declared = container.duration / av.time_base if container.duration and container.duration > 0 else None
    ends = [e for e in (video_end, audio_end) if e]
    if not ends:
        return declared
    measured = max(ends)
    return measured if declared is None else min(declared, measured)


def _has_another_frame(container, stream) -> bool:
    """Whether a frame follows the first one (an animation rather than a still image)."""
    decoder = StreamDecoder(stream)
    for n, packet in enumerate(decoder.packets(container)):
        if decoder.decode(packet):
            return True
        if n >= _MAX_PACKETS:
            return False
    return bool(decoder.flush())


# Demuxers with an index of the video's keyframes (MP4/MOV sample tables, Matroska cues,
# AVI idx1): the ones chunk tasks can seek in exactly.
_INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}


def _cuttable(container, stream, duration: float | None) -> bool:
    """Can the timeline be cut into chunks that tasks encode apart? It needs a keyframe
    index (a seek lands on a keyframe at or before its target) with timestamps that only go
    forward, and that reaches the end the file declares (a recording cut short may declare
    far more than its index holds: its chunks past the end would only find nothing).
    Checked from the index alone, so a probe of an upload's two ends suffices."""
    if not duration or not set(container.format.name.split(",")) & _INDEXED_FORMATS:
        return False
    try:
        # Matroska reads its cues on the first seek: ask for one, to the middle.
        container.seek(int(duration / 2 / stream.time_base), stream=stream, backward=True)
    except av.error.FFmpegError:
        return False
    keys = [e.timestamp for e in stream.index_entries if e.is_keyframe]
    if len(keys) < 2 or not all(a < b for a, b in zip(keys, keys[1:])):
        return False
    gap = max(b - a for a, b in zip(keys, keys[1:])) * stream.time_base
    last = keys[-1] * stream.time_base - origin(container)
    return duration - float(last) <= max(_INDEX_SHORT_S, 3 * float(gap))


# --- isolation: each probe in its own child process with bounded memory, CPU and time -------
#
# The children are forked from a fork server that has already imported PyAV (multiprocessing's
# "forkserver" start method): each probe still gets a fresh process of its own, with its own
# limits and nothing shared with the pipeline, but costs a fork (a few ms) instead of a Python
# start and the import of PyAV (214 vs 20 ms of CPU per probe, bench/README.md "overhead"). The fork
# server is single-threaded, so forking it is safe where forking this threaded service is not.
# A child re-runs its parent's main *script* before probing (multiprocessing's rule; a
# package's __main__ is exempt), which is why services run as `python -m services`.

_result_decoder = msgspec.json.Decoder(dict)
_context = None


def _fork_context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["services.pipeline.probe"])
    return _context


async def probe_isolated(path: str, *, timeout_s: float = 30.0, max_memory_mb: int = 1024, **limits) -> SourceInfo:
    """`probe` in a child process of its own: address space at most `max_memory_mb` MiB
    (RLIMIT_AS), CPU time at most `timeout_s` + 1 s (RLIMIT_CPU), and killed after `timeout_s`
    seconds of wall-clock time. Raises MediaError as `probe` does (a child that dies or is
    killed is `unreadable`)."""
    args = child_args(path, timeout_s=timeout_s, max_memory_mb=max_memory_mb, **limits)
    context = _fork_context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(args, sender), name="vidmesh-probe", daemon=True)
    loop = asyncio.get_running_loop()
    try:
        # the first start launches the fork server (one Python start per service lifetime)
        await asyncio.to_thread(child.start)
        sender.close()
        readable = loop.create_future()
        loop.add_reader(receiver.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout_s)
        except TimeoutError:
            raise MediaError("unreadable", f"probing took longer than {timeout_s:g} s") from None
        finally:
            loop.remove_reader(receiver.fileno())
        try:
            out = receiver.recv_bytes()  # one small message, written whole by the child
        except (EOFError, OSError):
            out = b""  # the child died before answering
    finally:
        receiver.close()
        if child.pid is not None:
            if child.exitcode is None:
                child.kill()  # timed out or cancelled; a no-op race if it just ended
            await asyncio.to_thread(child.join)
    return read_result(out, child.exitcode)


def child_args(path: str, *, timeout_s: float, max_memory_mb: int, **limits) -> dict:
    """What a limited probe of `path` is told, as JSON-able data (`_limited_probe` reads it)."""
    return {"path": path, "limits": limits, "max_memory_mb": max_memory_mb, "cpu_s": int(timeout_s) + 1}


def read_result(out: bytes, exitcode: int | None) -> SourceInfo:
    """The SourceInfo a limited probe answered with `out`; raises the MediaError it answered
    with, or MediaError("unreadable") when there is no answer (the child died, `exitcode`
    says how)."""
    try:
        result = _result_decoder.decode(out)
    except msgspec.DecodeError:
        why = f"exit {exitcode}" if exitcode is not None and exitcode >= 0 else f"signal {-(exitcode or 0)}"
        raise MediaError(
            "unreadable", f"the probe failed ({why}): the file needs more than the probe may use"
        ) from None
    if "error" in result:
        raise MediaError(result["error"]["code"], result["error"]["message"])
    return msgspec.convert(result["source"], SourceInfo)


def _child_main(args: dict, conn) -> None:
    """In the forked child: set the limits, probe, send the result as JSON."""
    conn.send_bytes(_limited_probe(args))
    conn.close()


def _limited_probe(args: dict) -> bytes:
    import resource

    try:  # glibc: few malloc arenas, as each one reserves address space counted by RLIMIT_AS
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
    limit = args["max_memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (args["cpu_s"], args["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limits = dict(args["limits"])
    if "containers" in limits:
        limits["containers"] = tuple(limits["containers"])
    try:
        result = {"source": msgspec.to_builtins(probe(args["path"], **limits))}
    except MediaError as exc:
        result = {"error": {"code": exc.code, "message": exc.message}}
    except MemoryError:
        result = {"error": {"code": "unreadable", "message": f"decoding needs more than {args['max_memory_mb']} MiB"}}
    return json.dumps(result).encode()


if __name__ == "__main__":
    # `python -m services.pipeline.probe '<json args>'`: the same limited probe in a fresh
    # Python, its JSON result on stdout (what a design without a fork server runs per upload)
    sys.stdout.write(_limited_probe(json.loads(sys.argv[1])).decode())

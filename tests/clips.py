"""Small real media files for tests and benchmarks, generated with PyAV.

Every clip shows a moving textured gradient (so the encoder has real work to do) and a
static white square in the top-left corner of the *stored* frame, so a test can tell
which way a rendition was turned. Audio, when present, is a stereo AAC tone at 48 kHz.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np

AUDIO_RATE = 48000
AUDIO_FRAME = 1024  # the AAC encoder's frame size


def make_clip(
    path,
    *,
    width: int = 320,
    height: int = 240,
    seconds: float = 1.0,
    fps: int | Fraction = 30,
    audio: bool = True,
    rotation: int = 0,
    sar: tuple[int, int] | Fraction | None = None,
    codec: str = "libx264",
    container: str | None = None,
    faststart: bool = False,
    gop: int | None = None,
    bframes: int = 0,
    full_range: bool = False,
) -> str:
    """Write a clip and return its path.

    rotation: degrees CLOCKWISE a player must turn the stored frames to show them upright
    (what a phone held upright writes as "rotation -90"). It is stored as a display matrix,
    so probe() reports the same number back.
    sar: sample aspect ratio of the stored pixels, e.g. (4, 3) for anamorphic video.
    gop: frames between keyframes (None: the encoder's default, a single keyframe in a
    short clip; a source needs several for chunk tasks to seek in it).
    bframes: B-frames between references (libx264), so presentation order differs from
    decode order as in most camera and web video.
    full_range: flag the video as full range (luma 0-255, as phones and screen recorders
    write it) instead of the studio range 16-235; the pixel values stay the same.
    """
    path = str(path)
    # 4:2:0 needs even sizes for x264; odd sizes fall back to 4:4:4 there.
    odd = width % 2 or height % 2
    pix_fmt = "yuv444p" if codec == "libx264" and odd else "yuv420p"
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, "w", format=container, options=options) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "28"}
        elif codec.startswith("libvpx"):
            vs.options = {"deadline": "realtime", "cpu-used": "8"}
        if codec == "libx264" and (gop is not None or bframes):
            params = [f"bframes={bframes}"] if bframes else []
            if gop is not None:
                params += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
            vs.options = {**vs.options, "x264-params": ":".join(params)}
        if gop is not None:
            vs.codec_context.gop_size = gop
        if full_range:
            vs.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        if sar is not None:
            vs.codec_context.sample_aspect_ratio = Fraction(*sar) if isinstance(sar, tuple) else sar
        if rotation % 360:
            vs.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        vs.codec_context.thread_type = "AUTO"
        as_ = None
        if audio:
            as_ = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")

        nframes = max(1, round(seconds * fps))
        sound = _audio_frames(seconds) if as_ is not None else iter(())
        pending = next(sound, None)
        for i, frame in enumerate(_video_frames(width, height, nframes)):
            if full_range:
                frame.color_range = av.video.reformatter.ColorRange.JPEG
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(vs.encode(frame))
            # Interleave audio up to the same time, as a camera would write it.
            while pending is not None and pending.pts <= (i + 1) * AUDIO_RATE / fps:
                out.mux(as_.encode(pending))
                pending = next(sound, None)
        out.mux(vs.encode(None))
        if as_ is not None:
            while pending is not None:
                out.mux(as_.encode(pending))
                pending = next(sound, None)
            out.mux(as_.encode(None))
    return path


def _video_frames(width: int, height: int, count: int):
    even = width % 2 == 0 and height % 2 == 0
    step = 4
    rng = np.random.default_rng(7)
    # A fixed noise texture, slid across the frame: motion the encoder must search for.
    noise = rng.integers(0, 24, (height, width + step * count), dtype=np.uint8)
    ramp = (np.arange(width, dtype=np.uint16)[None, :] + np.arange(height, dtype=np.uint16)[:, None]) // 4
    mark = max(2, min(width, height) // 4)
    for i in range(count):
        y = ((ramp + 2 * i) % 96 + 40).astype(np.uint8)
        y += noise[:, step * i : step * i + width]
        y[:mark, :mark] = 235  # the orientation marker
        if even:
            uv = np.full((height // 2, width), 128, np.uint8)
            uv[: height // 4, : width // 2] = (i * 3) % 256  # some colour that changes
            yield av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
        else:
            planes = np.stack([y, np.full_like(y, 128), np.full_like(y, 128)])
            yield av.VideoFrame.from_ndarray(planes, format="yuv444p")


def _audio_frames(seconds: float):
    total = int(round(seconds * AUDIO_RATE))
    for start in range(0, total, AUDIO_FRAME):
        n = min(AUDIO_FRAME, total - start)
        t = (np.arange(start, start + n) / AUDIO_RATE).astype(np.float32)
        tone = (0.2 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        yield frame


def make_audio_only(path, *, seconds: float = 1.0) -> str:
    """An AAC tone in an M4A (MP4) container: a media file without any picture."""
    path = str(path)
    with av.open(path, "w", format="mp4") as out:
        st = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for frame in _audio_frames(seconds):
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def make_image(path, *, width: int = 64, height: int = 48) -> str:
    """A still image: PNG, or JPEG when the path ends in .jpg/.jpeg."""
    path = str(path)
    jpeg = path.lower().endswith((".jpg", ".jpeg"))
    ctx = av.CodecContext.create("mjpeg" if jpeg else "png", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuvj420p" if jpeg else "rgb24"
    ctx.time_base = Fraction(1, 25)
    frame = next(_video_frames(width, height, 1)).reformat(format=ctx.pix_fmt)
    data = b"".join(bytes(p) for p in ctx.encode(frame) + ctx.encode(None))
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_truncated(path, *, seconds: float = 4.0, keep: float = 0.5) -> str:
    """A faststart MP4 (index at the front) cut after `keep` of its bytes.

    It opens and reports its full duration, but the media data stops part-way: the case
    that decodes "successfully" into a short output unless someone checks.
    """
    path = str(path)
    make_clip(path, seconds=seconds, faststart=True, container="mp4")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    return path


# Frame intervals (ms) of make_vfr_clip: 60, 30, 25, 20 and 15 frames/s mixed, the way a phone
# camera drops its rate in low light or a screen recorder writes only changed frames.
VFR_INTERVALS_MS = (17, 33, 40, 67, 17, 17, 33, 50, 40, 33, 67, 17, 33)


def make_vfr_clip(
    path,
    *,
    width: int = 320,
    height: int = 240,
    seconds: float = 3.0,
    audio: bool = True,
    container: str | None = None,
    keyframe_s: float = 0.5,
    intervals_ms: tuple[int, ...] = VFR_INTERVALS_MS,
) -> str:
    """Write a variable-frame-rate H.264 clip (millisecond timestamps with irregular steps,
    `intervals_ms` over and over) and return its path.

    A keyframe opens the first frame at or after every `keyframe_s`, so the file has a
    seek index chunk tasks can use. Audio, when present, is the usual continuous tone.
    A long interval makes a still stretch with no frames at all, as screen recorders write
    when nothing on screen changes.
    """
    path = str(path)
    tb = Fraction(1, 1000)
    stamps, t, i = [], 0, 0
    while t < seconds * 1000:
        stamps.append(t)
        t += intervals_ms[i % len(intervals_ms)]
        i += 1
    with av.open(path, "w", format=container) as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        # Keyframes only where a frame is marked as one (below).
        vs.options = {
            "preset": "ultrafast",
            "crf": "28",
            "forced-idr": "1",
            "x264-params": "keyint=infinite:scenecut=0",
        }
        as_ = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo") if audio else None
        sound = _audio_frames(seconds) if as_ is not None else iter(())
        pending = next(sound, None)
        next_key = 0.0
        for frame, ms in zip(_video_frames(width, height, len(stamps)), stamps):
            frame.pts, frame.time_base = ms, tb
            if ms / 1000 >= next_key:
                frame.pict_type = av.video.frame.PictureType.I
                next_key = (ms / 1000 // keyframe_s + 1) * keyframe_s
            out.mux(vs.encode(frame))
            # interleave the audio up to a little past this frame, as a camera writes it
            while pending is not None and pending.pts <= (ms + 70) * AUDIO_RATE / 1000:
                out.mux(as_.encode(pending))
                pending = next(sound, None)
        out.mux(vs.encode(None))
        if as_ is not None:
            while pending is not None:
                out.mux(as_.encode(pending))
                pending = next(sound, None)
            out.mux(as_.encode(None))
    return path

"""Animated WebP, which FFmpeg does not decode (its webp decoder takes still images only),
read with libwebp through Pillow and handed on as a lossless video (FFV1 with its alpha
plane, in Matroska, in memory) with each frame's own delay, so every other piece of media
code opens it like any video.

Animated WebP is a format for short loops (stickers, reactions); the frames are kept in
memory compressed losslessly, and `max_frames` bounds the work.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

from .problems import MediaError

FORMAT = "webp"  # what the probe reports as the container
_TIME_BASE = Fraction(1, 1000)  # WebP frame delays are milliseconds (WebP container spec, ANMF)


def is_animated_webp(head: bytes) -> bool:
    """Whether the first bytes of a file open an animated WebP: a RIFF WEBP file whose VP8X
    chunk has the animation flag (bit 1 of its flags byte; WebP container specification)."""
    return (
        len(head) >= 21
        and head[:4] == b"RIFF"
        and head[8:12] == b"WEBP"
        and head[12:16] == b"VP8X"
        and bool(head[20] & 0x02)
    )


def to_video(src: str | BinaryIO, *, max_frames: int = 20000) -> io.BytesIO:
    """The animation of `src` as a Matroska file in memory: FFV1 `bgra` frames at their own
    times (milliseconds), each lasting its delay.

    Raises MediaError("bad_media") when libwebp cannot read it or it has over `max_frames`
    frames."""
    from PIL import Image  # only animated WebP needs it

    buf = io.BytesIO()
    try:
        with Image.open(src) as image:
            count = getattr(image, "n_frames", 1)
            if count > max_frames:
                raise MediaError("bad_media", f"the animation has {count} frames, over the limit of {max_frames}")
            with av.open(buf, "w", format="matroska") as out:
                stream = out.add_stream("ffv1", rate=25)
                stream.width, stream.height, stream.pix_fmt = image.width, image.height, "bgra"
                stream.time_base = _TIME_BASE
                stream.codec_context.time_base = _TIME_BASE
                delays: dict[int, int] = {}  # pts -> delay: the encoder does not carry durations
                at = 0
                for index in range(count):
                    image.seek(index)
                    image.load()
                    delay = max(1, int(image.info.get("duration") or 100))  # 0 reads as 100 ms, as browsers do
                    rgba = np.asarray(image.convert("RGBA"))
                    frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format="bgra")
                    frame.pts, frame.time_base = at, _TIME_BASE
                    delays[at] = delay
                    _mux(out, stream.encode(frame), delays)
                    at += delay
                _mux(out, stream.encode(None), delays)
    except (OSError, ValueError, EOFError) as e:
        raise MediaError("bad_media", f"the WebP animation cannot be decoded: {e}") from None
    buf.seek(0)
    return buf


def _mux(out, packets, delays: dict[int, int]) -> None:
    for packet in packets:
        packet.duration = delays.get(packet.pts, packet.duration)
        out.mux(packet)

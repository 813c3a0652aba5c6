"""The thumbnail: the first frame of a video, upright, as a JPEG.

Pure PyAV: no bus, no HTTP. About 45 ms for a 1080p source.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import BinaryIO

import av
from av.video.reformatter import Interpolation, VideoReformatter

_MAX_PACKETS = 600  # bounded work: a real video yields its first frame within a few packets
_JPEG_QSCALE = 3  # 2 (best) .. 31 (worst); 3 is visually clean at thumbnail sizes


class MediaError(Exception):
    """code "bad_media": no frame could be decoded from the source."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def first_frame_jpeg(src: str | BinaryIO, dst: str, *, max_width: int = 640) -> tuple[int, int]:
    """Write the first frame of `src` (a path or a seekable file) to `dst` as a JPEG and
    return its (width, height).

    The frame is turned upright (display matrix), shown at its display aspect ratio
    (sample aspect ratio applied) and scaled down to at most max_width wide; never up.
    """
    if max_width < 2:
        raise ValueError(f"max_width must be at least 2, got {max_width}")
    try:
        with av.open(src, container_options={"protocol_whitelist": "file"}, metadata_errors="replace") as inp:
            stream = next((s for s in inp.streams.video if not _is_cover_art(s)), None)
            if stream is None:
                raise MediaError("bad_media", "the source has no video stream")
            frame = _first_frame(inp, stream)
            sar = _sar(stream)
        if frame is None:
            raise MediaError("bad_media", "no video frame could be decoded")
        jpeg, size = _encode(frame, sar, max_width)
    except av.error.FFmpegError as e:
        raise MediaError("bad_media", f"the source cannot be decoded: {e.strerror or e}") from None
    tmp = dst + ".part"  # never leave a half-written image under the real name
    with open(tmp, "wb") as f:
        f.write(jpeg)
    os.replace(tmp, dst)
    return size


def _encode(frame: av.VideoFrame, sar: Fraction, max_width: int) -> tuple[bytes, tuple[int, int]]:
    rotation = (-round(frame.rotation / 90) * 90) % 360  # PyAV's angle is counter-clockwise
    turned = rotation in (90, 270)
    shown_w, shown_h = frame.width * sar, frame.height
    if turned:
        shown_w, shown_h = shown_h, shown_w
    width = max(2, int(min(max_width, shown_w)) // 2 * 2)
    height = max(2, round(shown_h * width / shown_w / 2) * 2)

    # Scale first (cheaper), then turn the small picture.
    w, h = (height, width) if turned else (width, height)
    small = VideoReformatter().reformat(
        frame, width=w, height=h, format="yuvj420p", interpolation=Interpolation.BILINEAR,
        src_color_range=frame.color_range,
    )
    if rotation:
        small = _turn(small, rotation)

    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.qscale = _JPEG_QSCALE  # fixed quality: the default bit rate starves a single frame
    small.pts, small.time_base = 0, ctx.time_base
    jpeg = b"".join(bytes(p) for p in ctx.encode(small) + ctx.encode(None))
    return jpeg, (width, height)


def _turn(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    graph = av.filter.Graph()
    node = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 25))
    steps = {90: [("transpose", "clock")], 270: [("transpose", "cclock")], 180: [("hflip", None), ("vflip", None)]}
    for name, args in steps[rotation]:
        nxt = graph.add(name, args)
        node.link_to(nxt)
        node = nxt
    node.link_to(graph.add("buffersink"))
    graph.configure()
    frame.pts = 0
    graph.push(frame)
    return graph.pull()


def _first_frame(inp, stream):
    for n, packet in enumerate(inp.demux(stream)):
        for frame in packet.decode():
            return frame
        if n >= _MAX_PACKETS:
            break
    return None


def _sar(stream) -> Fraction:
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def _is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)

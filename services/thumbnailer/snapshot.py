"""The thumbnail: the first frame of a video, upright, as a JPEG.

Pure PyAV: no bus, no HTTP. The frame goes through the same frame path as the renditions
(media.frames: deinterlace, tone map / colour conversion, alpha flatten), so a thumbnail
looks like the video it stands for. About 45 ms for a 1080p SDR source.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import BinaryIO

import av
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from media.alpha import BLACK
from media.colour import BT470BG, TRC_BT709, Colour, reformat_colorspaces
from media.frames import FramePath
from media.geometry import even, rotation_of, sample_aspect_ratio, shown_size
from media.problems import MediaError
from media.rotate import Rotation
from media.source import first_frame, open_source, video_stream

_JPEG_QSCALE = 3  # 2 (best) .. 31 (worst); 3 is visually clean at thumbnail sizes
# JFIF's Y'CbCr is ITU-R BT.601 full range, which every image viewer assumes
_JFIF = Colour(primaries=1, transfer=TRC_BT709, matrix=BT470BG)


def first_frame_jpeg(
    src: str | BinaryIO, dst: str, *, max_width: int = 640, background: tuple[int, int, int] = BLACK
) -> tuple[int, int]:
    """Write the first frame of `src` (a path or a seekable file) to `dst` as a JPEG and
    return its (width, height).

    The frame is filtered as the renditions are (transparency flattened on `background`),
    turned upright (display matrix), shown at its display aspect ratio (sample aspect ratio
    applied) and scaled down to at most max_width wide; never up. Raises
    MediaError("bad_media") when no frame can be decoded.
    """
    if max_width < 2:
        raise ValueError(f"max_width must be at least 2, got {max_width}")
    try:
        with open_source(src) as inp:
            stream = video_stream(inp)
            frame, _ = first_frame(inp, stream)
            if frame is None:
                raise MediaError("bad_media", "no video frame could be decoded")
            rotation = rotation_of(frame)
            path = FramePath(stream, background=background)  # turned after scaling: cheaper
            filtered = (path.push(frame) + path.flush())[0]
            jpeg, size = _encode(filtered, path.colour, sample_aspect_ratio(stream), rotation, max_width)
    except av.error.FFmpegError as e:
        raise MediaError("bad_media", f"the source cannot be decoded: {e.strerror or e}") from None
    tmp = dst + ".part"  # never leave a half-written image under the real name
    with open(tmp, "wb") as f:
        f.write(jpeg)
    os.replace(tmp, dst)
    return size


def _encode(
    frame: av.VideoFrame, colour: Colour, sar: Fraction, rotation: int, max_width: int
) -> tuple[bytes, tuple[int, int]]:
    turned = rotation in (90, 270)
    shown_w, shown_h = shown_size(frame.width, frame.height, sar, rotation)
    width = even(min(max_width, shown_w))
    height = max(2, round(shown_h * width / shown_w / 2) * 2)

    # Scale first (cheaper), then turn the small picture.
    w, h = (height, width) if turned else (width, height)
    src_cs, dst_cs = reformat_colorspaces(colour, _JFIF)
    small = VideoReformatter().reformat(
        frame,
        width=w,
        height=h,
        format="yuvj420p",
        interpolation=Interpolation.BILINEAR,
        src_colorspace=src_cs,
        dst_colorspace=dst_cs or Colorspace.ITU601,
        src_color_range=frame.color_range,
        dst_color_range=ColorRange.JPEG,
    )
    if rotation:
        small.pts = 0
        small = Rotation(rotation)(small)

    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.qscale = _JPEG_QSCALE  # fixed quality: the default bit rate starves a single frame
    small.pts, small.time_base = 0, ctx.time_base
    jpeg = b"".join(bytes(p) for p in ctx.encode(small) + ctx.encode(None))
    return jpeg, (width, height)

"""Transparency flattened onto a background colour (black unless configured).

H.264 has no alpha: a transparent pixel must show something, and what the encoder would
otherwise keep is whatever colour the transparent area happens to hold (often hidden
content). Each pixel becomes alpha x colour + (1 - alpha) x background ("over", Porter and
Duff), in the frame's own colour model: R'G'B' formats (PNG, GIF, QuickTime Animation,
animated WebP) in R'G'B', Y'CbCr formats (VP9 alpha, ProRes 4444) in Y'CbCr.
"""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

BLACK = (0, 0, 0)
# R'G'B' -> Y'CbCr coefficients (kr, kb) per H.273 matrix code: BT.709, BT.470 BG, SMPTE 170M
_KR_KB = {1: (0.2126, 0.0722), 5: (0.299, 0.114), 6: (0.299, 0.114), 9: (0.2627, 0.0593)}


def has_alpha(fmt: av.VideoFormat) -> bool:
    """Whether frames of this pixel format can be transparent (an alpha plane or a palette)."""
    return fmt.has_palette or len(fmt.components) in (2, 4)


class Flatten:
    """Frames with alpha -> opaque frames (rgb24, or yuv444p for Y'CbCr sources), same
    timestamps and tags."""

    def __init__(self, background: tuple[int, int, int] = BLACK):
        self.background = background
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        fmt = frame.format
        if fmt.is_rgb or fmt.has_palette or len(fmt.components) == 2:
            rgba = self.reformatter.reformat(frame, format="rgba").to_ndarray()
            flat = _over(rgba[..., :3], rgba[..., 3:], np.array(self.background, np.uint16))
            out = av.VideoFrame.from_ndarray(flat, format="rgb24")
        else:
            yuva = self.reformatter.reformat(
                frame, format="yuva444p", src_color_range=frame.color_range, dst_color_range=frame.color_range
            )
            planes = np.stack([_plane(p) for p in yuva.planes], axis=-1)  # Y, U, V, A
            bg = self._background_ycbcr(int(frame.colorspace), frame.color_range == ColorRange.JPEG)
            flat = _over(planes[..., :3], planes[..., 3:], bg)
            out = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.moveaxis(flat, -1, 0)), format="yuv444p")
            out.colorspace, out.color_range = frame.colorspace, frame.color_range
            out.color_primaries, out.color_trc = frame.color_primaries, frame.color_trc
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def _background_ycbcr(self, matrix: int, full: bool) -> np.ndarray:
        kr, kb = _KR_KB.get(matrix, _KR_KB[1])
        r, g, b = (c / 255 for c in self.background)
        y = kr * r + (1 - kr - kb) * g + kb * b
        cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
        if full:
            values = (255 * y, 128 + 255 * cb, 128 + 255 * cr)
        else:
            values = (16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr)
        return np.array([min(255, max(0, round(v))) for v in values], np.uint16)


def _plane(plane) -> np.ndarray:
    """An 8-bit plane without its line padding."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _over(colour: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """colour over background with 8-bit alpha, rounded: (c a + bg (255 - a) + 127) / 255."""
    a = alpha.astype(np.uint16)
    mixed = colour.astype(np.uint16) * a + background * (255 - a) + 127
    return (mixed // 255).astype(np.uint8)

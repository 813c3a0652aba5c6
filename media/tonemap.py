"""HDR and wide-gamut video to SDR BT.709, through one 3D LUT per kind of source.

The conversion is the one FFmpeg users make with zscale and tonemap (which the bundled
FFmpeg lacks: it has no zscale, and its scale filter's own colour management maps gamut
and tone differently), evaluated once per LUT entry in numpy:

  Y'CbCr BT.2020 (ITU-R BT.2020, limited range) -> R'G'B'
  -> linear light, 1.0 = 100 cd/m2: PQ's EOTF (SMPTE ST 2084), HLG's inverse OETF with a
     1.2 system gamma (ITU-R BT.2100; 1000 cd/m2 display), BT.1886's EOTF for SDR BT.2020
  -> BT.709 primaries (ITU-R BT.2087 matrix)
  -> tone mapping of HDR with Hable's curve on the largest component, peak 1000 cd/m2
     (what FFmpeg's tonemap=hable does without mastering metadata), hue kept
  -> BT.1886's inverse EOTF -> Y'CbCr BT.709, limited range.

The LUT maps 10-bit Y'CbCr to Y'CbCr directly, so per frame the work is a 4:4:4
upsample and FFmpeg's lut3d (tetrahedral interpolation), no R'G'B' pass. Colours outside
BT.709 are clipped in R'G'B' (as a display shows them). Against zscale+tonemap, displayed
the same way, the renditions reach 40-48 dB luma PSNR on a test pattern
(tests/unit/test_frame_filters.py).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from .colour import REC709, tag
from .graphs import FilterChain

LUT_SIZE = 33
PEAK = 10.0  # 1000 cd/m2 in units of 100 cd/m2: HLG's nominal display, tonemap's default peak
_BITS = 10
# BT.2020 -> BT.709 in linear light (ITU-R BT.2087, table 4)
_TO_709 = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]])
_KINDS = ("pq", "hlg", "bt2020")

_lock = threading.Lock()
_files: dict[str, str] = {}


class ToneMap:
    """Frames of one kind of source ("pq", "hlg" or "bt2020") -> yuv444p10le frames tagged
    BT.709, limited range, same timestamps."""

    def __init__(self, kind: str):
        if kind not in _KINDS:
            raise ValueError(f"unknown conversion {kind!r}")
        self.chain = FilterChain([("lut3d", f"file={lut_file(kind)}:interp=tetrahedral")])
        self.upsample = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        full = self.upsample.reformat(
            frame,
            format="yuv444p10le",
            interpolation=Interpolation.BILINEAR,
            src_color_range=frame.color_range,
            dst_color_range=ColorRange.MPEG,
        )
        # lut3d takes R'G'B' only: the Y'CbCr planes go in as G, B, R (gbrp's plane order)
        (mapped,) = self.chain.push(_relabel(full, "gbrp10le")) or [None]
        if mapped is None:
            raise RuntimeError("lut3d held a frame back")
        out = _relabel(mapped, "yuv444p10le")
        out.pts, out.time_base = frame.pts, frame.time_base
        tag(out, REC709)
        return out


def _relabel(frame: av.VideoFrame, fmt: str) -> av.VideoFrame:
    """The same planes under another planar pixel format of the same depth (a copy)."""
    out = av.VideoFrame(frame.width, frame.height, fmt)
    for src, dst in zip(frame.planes, out.planes):
        width = src.width * 2  # 16-bit samples
        a = np.frombuffer(src, np.uint8).reshape(src.height, src.line_size)[:, :width]
        b = np.frombuffer(dst, np.uint8).reshape(dst.height, dst.line_size)
        b[:, :width] = a
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def lut_file(kind: str) -> str:
    """The .cube file of a conversion, written once per process."""
    with _lock:
        path = _files.get(kind)
        if path is None or not os.path.exists(path):
            fd, path = tempfile.mkstemp(prefix=f"vidmesh-{kind}-", suffix=".cube")
            with os.fdopen(fd, "w") as fh:
                fh.write(f"LUT_3D_SIZE {LUT_SIZE}\n")
                np.savetxt(fh, lut(kind), fmt="%.6f")
            _files[kind] = path
        return path


def lut(kind: str, size: int = LUT_SIZE) -> np.ndarray:
    """The LUT's entries, (size^3, 3) in .cube order (the first axis fastest). Axes and
    outputs are 10-bit code values / 1023, as lut3d reads gbrp10: the R axis carries Cr,
    G carries Y', B carries Cb."""
    code, scale = (1 << _BITS) - 1, 1 << (_BITS - 8)
    axis = np.linspace(0.0, 1.0, size)
    cb, y, cr = np.meshgrid(axis, axis, axis, indexing="ij")  # cr varies fastest
    y = (y * code - 16 * scale) / (219 * scale)
    cb = (cb * code - 128 * scale) / (224 * scale)
    cr = (cr * code - 128 * scale) / (224 * scale)
    rgb = _to_rgb(y, cb, cr, kr=0.2627, kb=0.0593)  # BT.2020 non-constant luminance
    if kind == "pq":
        linear = _pq_eotf(rgb) / 100.0
    elif kind == "hlg":
        linear = np.power(_hlg_inverse_oetf(rgb), 1.2) * (1000.0 / 100.0)
    else:
        linear = _signed_power(rgb, 2.4)
    linear = linear @ _TO_709.T
    if kind in ("pq", "hlg"):
        peak = np.maximum(linear.max(axis=-1, keepdims=True), 1e-6)
        linear = linear * (_hable(peak) / _hable(PEAK)) / peak
    # colours outside BT.709 are clipped here, in R'G'B', as a display would show them, so
    # that the Y'CbCr holds only legal colours (4:2:0 would smear illegal ones)
    out = np.power(np.clip(linear, 0.0, 1.0), 1 / 2.4)
    y, cb, cr = _to_ycbcr(out, kr=0.2126, kb=0.0722)  # BT.709
    entries = np.stack(
        [
            (cr * 224 * scale + 128 * scale) / code,
            (y * 219 * scale + 16 * scale) / code,
            (cb * 224 * scale + 128 * scale) / code,
        ],
        axis=-1,
    )
    return np.clip(entries, 0.0, 1.0).reshape(-1, 3)


def _to_rgb(y, cb, cr, *, kr, kb):
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.stack([r, g, b], axis=-1)


def _to_ycbcr(rgb, *, kr, kb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = kr * r + (1 - kr - kb) * g + kb * b
    return y, (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))


def _signed_power(x, p):
    return np.sign(x) * np.power(np.abs(x), p)


def _pq_eotf(e):
    """SMPTE ST 2084: signal -> cd/m2. Signals past the curve's pole (just above 1) are as
    bright as it gets, as zimg extrapolates them (and what tone mapping then makes of them
    is a fully saturated colour)."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.maximum(e, 0.0), 1 / m2)
    ratio = np.maximum(p - c1, 0.0) / np.maximum(c2 - c3 * p, 1e-6)
    return np.minimum(10000.0 * np.power(ratio, 1 / m1), 1e12)


def _hlg_inverse_oetf(e):
    """ARIB STD-B67 / ITU-R BT.2100: signal -> scene light 0..1."""
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * math.log(4 * a)
    e = np.maximum(e, 0.0)
    return np.where(e <= 0.5, e * e / 3, (np.exp((e - c) / a) + b) / 12)


def _hable(x):
    """John Hable's filmic curve (Uncharted 2), as FFmpeg's tonemap filter has it."""
    a, b, c, d, e, f = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30
    return (x * (x * a + b * c) + d * e) / (x * (x * a + b) + d * f) - e / f

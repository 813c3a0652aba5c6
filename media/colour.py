"""What a source's colour tags say, and what each rendition is tagged with.

Code points are those of ITU-T H.273 (ISO/IEC 23091-2), as FFmpeg numbers them. Untagged
sources are read the way players guess them (ITU-R BT.601 for standard definition,
BT.709 above), R'G'B' sources (PNG, GIF, QuickTime Animation) as BT.709, whose primaries
are sRGB's.

Every rendition is tagged (primaries, transfer, matrix, limited range):
- HDR (PQ, HLG; ITU-R BT.2100) and BT.2020 sources are converted to SDR BT.709 once per
  frame by the frame path (tonemap.py), so every rung is BT.709;
- an HD rung (shorter side 720 or more) is BT.709: a BT.601 source is converted by the
  rung's scaler in the same pass (matrix; the SMPTE 170M and BT.709 primaries differ too
  little to matter at 8 bits, as FFmpeg's scale filter also assumes);
- an SD rung keeps a BT.601 source's own tags (no conversion, as an SD delivery would).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
from av.video.reformatter import ColorRange, Colorspace

# primaries and matrix (H.273 tables 2 and 4 share these numbers)
BT709, UNSPECIFIED, BT470BG, SMPTE170M, BT2020 = 1, 2, 5, 6, 9
RGB = 0  # matrix: the frame is R'G'B', not Y'CbCr
BT2020_CL = 10
# transfer characteristics (H.273 table 3)
TRC_BT709, TRC_SMPTE170M, TRC_PQ, TRC_HLG = 1, 6, 16, 18

SD_MAX_HEIGHT = 576  # ITU-R BT.601 frame heights (480, 576) and below
HD_MIN_SIDE = 720


@dataclass(frozen=True)
class Colour:
    """A picture's colour description: H.273 code points."""

    primaries: int
    transfer: int
    matrix: int

    @property
    def hdr(self) -> bool:
        """PQ (SMPTE ST 2084) or HLG (ARIB STD-B67): ITU-R BT.2100."""
        return self.transfer in (TRC_PQ, TRC_HLG)

    @property
    def wide(self) -> bool:
        """BT.2020 primaries or matrix (ITU-R BT.2020): must be converted for BT.709."""
        return self.primaries == BT2020 or self.matrix in (BT2020, BT2020_CL)

    @property
    def sd(self) -> bool:
        """A BT.601 Y'CbCr matrix (BT.470 BG for 625 lines, SMPTE 170M for 525)."""
        return self.matrix in (BT470BG, SMPTE170M)


REC709 = Colour(primaries=BT709, transfer=TRC_BT709, matrix=BT709)


def source_colour(stream) -> Colour:
    """The colour of a video stream's decoded frames: its tags, with the usual guess for
    what is unspecified (BT.601 up to 576 lines, BT.709 above; R'G'B' formats BT.709)."""
    ctx = stream.codec_context
    height = ctx.height or 0
    rgb = _is_rgb(ctx.pix_fmt)
    primaries, transfer, matrix = int(ctx.color_primaries or 0), int(ctx.color_trc or 0), int(ctx.colorspace or 0)
    sd_guess = SMPTE170M if height <= 480 else BT470BG
    if rgb:
        matrix = RGB
    elif matrix in (UNSPECIFIED, RGB) or matrix > 14:
        matrix = sd_guess if height <= SD_MAX_HEIGHT else BT709
    if primaries in (0, UNSPECIFIED) or primaries > 22:
        primaries = BT2020 if matrix in (BT2020, BT2020_CL) else (matrix if matrix in (BT470BG, SMPTE170M) else BT709)
    if transfer in (0, UNSPECIFIED) or transfer > 18:
        transfer = TRC_BT709
    return Colour(primaries=primaries, transfer=transfer, matrix=matrix)


def tone_map_kind(colour: Colour) -> str | None:
    """Which conversion the frame path applies: "pq" or "hlg" (tone mapping) for HDR,
    "bt2020" for SDR in BT.2020, None for BT.709/BT.601."""
    if colour.transfer == TRC_PQ:
        return "pq"
    if colour.transfer == TRC_HLG:
        return "hlg"
    if colour.wide:
        return "bt2020"
    return None


def rung_colour(frames: Colour, width: int, height: int) -> Colour:
    """The colour of a width x height rendition of frames in `frames` (what the frame path
    outputs): BT.709, except an SD rung of a BT.601 source, which keeps its tags."""
    if frames.sd and min(width, height) < HD_MIN_SIDE:
        primaries = frames.primaries if frames.primaries in (BT470BG, SMPTE170M) else frames.matrix
        return Colour(primaries=primaries, transfer=TRC_SMPTE170M, matrix=frames.matrix)
    return REC709


def reformat_colorspaces(frames: Colour, out: Colour) -> tuple[Colorspace | None, Colorspace | None]:
    """(src_colorspace, dst_colorspace) for a VideoReformatter turning frames in `frames`
    into `out`: (None, None) when the matrix stays (no conversion, as fast as a plain scale)."""
    if frames.matrix == RGB:
        return None, _COLORSPACE[out.matrix]
    if frames.matrix == out.matrix:
        return None, None
    return _COLORSPACE.get(frames.matrix, Colorspace.ITU601), _COLORSPACE[out.matrix]


def tag(target, colour: Colour) -> None:
    """Set `colour` on an encoder context or a frame (limited range)."""
    target.color_primaries = colour.primaries
    target.color_trc = colour.transfer
    target.colorspace = colour.matrix
    target.color_range = ColorRange.MPEG


# swscale's Y'CbCr coefficient sets (it has one BT.601 set for both 525 and 625 lines)
_COLORSPACE = {
    BT709: Colorspace.ITU709,
    BT470BG: Colorspace.ITU601,
    SMPTE170M: Colorspace.ITU601,
    4: Colorspace.FCC,
    7: Colorspace.SMPTE240M,
    BT2020: Colorspace.BT2020,
    BT2020_CL: Colorspace.BT2020,
}


def _is_rgb(pix_fmt: str | None) -> bool:
    if not pix_fmt:
        return False
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        return False
    return fmt.is_rgb or fmt.has_palette

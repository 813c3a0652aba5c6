"""How a decoded picture is shown: its rotation (display matrix), its sample aspect ratio and
the size (so the display aspect ratio) that follows from both."""

from __future__ import annotations

from fractions import Fraction

import av


def rotation_of(frame: av.VideoFrame) -> int:
    """Degrees clockwise to turn a decoded frame upright (0/90/180/270).

    PyAV reports the display matrix angle counter-clockwise; ffmpeg turns -90 into
    transpose=clock, so the clockwise angle is its negation.
    """
    return (-round(frame.rotation / 90) * 90) % 360


def sample_aspect_ratio(stream) -> Fraction:
    """Sample aspect ratio the way ffmpeg guesses it: the container's, else the codec's; 1
    when neither says."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def shown_size(width: int, height: int, sar: Fraction, rotation: int) -> tuple[Fraction, Fraction]:
    """Frame size (pixels, exact, not rounded) as a player shows it: `width` stretched by
    `sar`, then both turned by `rotation` degrees clockwise. Its ratio is the display
    aspect ratio."""
    w, h = Fraction(width * sar), Fraction(height)
    return (h, w) if rotation in (90, 270) else (w, h)


def displayed_size(width: int, height: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    """shown_size rounded down to even pixels."""
    w, h = shown_size(width, height, sar, rotation)
    return even(w), even(h)


def even(x) -> int:
    """Round down to an even size of at least 2: 4:2:0 video needs even sizes, and no pixel
    is invented."""
    return max(2, int(x) // 2 * 2)

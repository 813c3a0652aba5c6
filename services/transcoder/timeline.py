"""What the transcoder's tasks share about a video's timeline: the segment grid, the audio
rate, and how a task tells that the media ended early or was damaged.

Pure: no PyAV, no bus.
"""

from __future__ import annotations

from fractions import Fraction

from media.problems import MediaWarning

AUDIO_RATE = 48000


def segment_grid(segment_s: float) -> Fraction:
    """The segment duration as an exact fraction, the same one in every task of a video."""
    if segment_s <= 0:
        raise ValueError(f"segment duration must be positive, got {segment_s}")
    return Fraction(segment_s).limit_denominator(1000)


def shortfall(end: float, expected: float | None, what: str) -> MediaWarning | None:
    """A "truncated" warning when `what` ("video", "audio") ends at `end` seconds, short of
    the `expected` end its file declares: a recording cut short, or a faststart MP4 cut after
    its index, plays what is there instead of failing.

    Well-formed files end within a frame or two of their stated duration: 10% is allowed on
    very short clips, never more than 0.2 s."""
    if not expected:
        return None
    tolerance = min(0.2, max(0.1, 0.1 * expected))
    if expected - end <= tolerance:
        return None
    return MediaWarning(
        "truncated",
        f"the {what} ends at {end:.2f} s of the {expected:.2f} s its file declares ({expected - end:.2f} s missing)",
    )


def damaged_packets(skipped: int, what: str) -> MediaWarning | None:
    """A "damaged_packets" warning when `skipped` packets of the `what` stream could not be
    decoded (each is left out, as the ffmpeg CLI does)."""
    if not skipped:
        return None
    noun = "packet was" if skipped == 1 else "packets were"
    return MediaWarning("damaged_packets", f"{skipped} undecodable {what} {noun} skipped")

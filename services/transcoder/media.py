"""What the transcoder's media code shares: its errors, opening a source, the timeline.

Pure PyAV: no bus, no HTTP.
"""

from __future__ import annotations

from fractions import Fraction
from typing import BinaryIO

import av

AUDIO_RATE = 48000


class MediaError(Exception):
    """code "bad_media": the input cannot be decoded completely (corrupt or truncated);
    retrying will not help. code "encode_failed": writing the output failed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    """should_stop() returned True; nothing was kept."""


def open_source(src: str | BinaryIO):
    """Open an upload (a path, or a seekable file such as shared.objects.ObjectReader).

    Raises MediaError("bad_media") when it cannot be opened."""
    try:
        return av.open(src, container_options={"protocol_whitelist": "file"}, metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise MediaError("bad_media", f"cannot open the source: {e.strerror or e}") from None


def origin(container) -> Fraction:
    """The source timeline's zero (seconds): the container's start time. Every stream is
    shifted by the same amount, so audio and video stay in sync."""
    return Fraction(container.start_time or 0, av.time_base)


def video_stream(container):
    """The first video stream that is not cover art; MediaError when there is none."""
    stream = next((s for s in container.streams.video if not is_cover_art(s)), None)
    if stream is None:
        raise MediaError("bad_media", "the source has no video stream")
    return stream


def is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def segment_grid(segment_s: float) -> Fraction:
    """The segment duration as an exact fraction, the same one in every task of a video."""
    if segment_s <= 0:
        raise ValueError(f"segment duration must be positive, got {segment_s}")
    return Fraction(segment_s).limit_denominator(1000)


def declared_end(container, stream) -> float | None:
    """Where the file says `stream` ends on the shifted timeline (seconds), else where the
    container ends; None when neither is known."""
    if stream.duration and stream.time_base:
        start = (stream.start_time or 0) * stream.time_base - origin(container)
        return float(start + stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


def check_complete(end: float, expected: float | None, what: str) -> None:
    """A faststart MP4 cut short opens, reports its full duration and then simply stops
    decoding: without this check it would become a silently short rendition.

    Well-formed files end within a frame or two of their stated duration: 10% is allowed on
    very short clips, never more than 0.2 s."""
    if not expected:
        return
    tolerance = min(0.2, max(0.1, 0.1 * expected))
    if expected - end > tolerance:
        raise MediaError(
            "bad_media", f"the {what} stops at {end:.2f} s of {expected:.2f} s (truncated or corrupt)"
        )

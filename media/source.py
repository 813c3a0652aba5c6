"""Opening an upload and finding its video and its timeline.

Times are seconds on the source timeline shifted so that the container's start is 0 (every
stream is shifted by the same amount, so audio and video stay in sync).
"""

from __future__ import annotations

from fractions import Fraction
from typing import BinaryIO

import av

from . import animated_webp
from .problems import MediaError

# What open_media names the image formats that may be animated (GIF, APNG, animated WebP).
ANIMATED_IMAGE_FORMATS = frozenset({"gif", "apng", "webp"})

# Demuxers whose index lists every sample (MP4/MOV sample tables and fragments, AVI idx1),
# so the last index entry is where the media ends whatever the header's duration says.
_SAMPLE_INDEXED = {"mov", "mp4", "avi"}


def open_media(src: str | BinaryIO) -> tuple[av.container.InputContainer, str]:
    """Open an upload (a path, or a seekable file such as shared.objects.ObjectReader) and
    name its format: the demuxer's name, or "webp" for an animated WebP (decoded through
    animated_webp, since FFmpeg cannot).

    Only local files: playlists or SDP in an upload must not reach the network. Raises
    MediaError("bad_media") when it cannot be opened."""
    try:
        if animated_webp.is_animated_webp(_head(src)):
            return open_file(animated_webp.to_video(src)), animated_webp.FORMAT
        container = open_file(src)
    except av.error.FFmpegError as e:
        raise MediaError("bad_media", f"not a media file ({e.strerror or e})") from None
    return container, container.format.name


def open_source(src: str | BinaryIO) -> av.container.InputContainer:
    """open_media without the format's name."""
    return open_media(src)[0]


def open_file(src: str | BinaryIO) -> av.container.InputContainer:
    """av.open for reading a local file (a path or a seekable file): a playlist or SDP inside
    must not reach the network, and metadata that is not UTF-8 is replaced rather than
    fatal. Raises av.error.FFmpegError when it cannot be opened."""
    return av.open(src, container_options={"protocol_whitelist": "file"}, metadata_errors="replace")


def _head(src: str | BinaryIO, size: int = 32) -> bytes:
    if isinstance(src, str):
        with open(src, "rb") as fh:
            return fh.read(size)
    at = src.tell()
    try:
        return src.read(size)
    finally:
        src.seek(at)


def is_cover_art(stream) -> bool:
    """Cover art in music files shows up as a one-picture video stream."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def main_video_stream(container):
    """The first video stream that is not cover art, or None."""
    return next((s for s in container.streams.video if not is_cover_art(s)), None)


def video_stream(container):
    """main_video_stream; MediaError("bad_media") when there is none."""
    stream = main_video_stream(container)
    if stream is None:
        raise MediaError("bad_media", "the source has no video stream")
    return stream


def audio_stream(container):
    """The audio track: the first audio stream, or None."""
    return container.streams.audio[0] if container.streams.audio else None


def origin(container) -> Fraction:
    """The source timeline's zero (seconds): the container's start time."""
    return Fraction(container.start_time or 0, av.time_base)


def expected_end(container, stream) -> float | None:
    """Where `stream` should end (seconds on the shifted timeline), measured from its first
    timestamp: the header's duration, or the end of its sample index where the format
    indexes every sample (a fragmented MP4 whose timeline starts at 66 s reports a 72 s
    duration that counts from 0; its index ends 6 s after its start). None when unknown."""
    declared = None
    if stream.duration and stream.time_base:
        start = (stream.start_time or 0) * stream.time_base - origin(container)
        declared = float(start + stream.duration * stream.time_base)
    elif container.duration and container.duration > 0:
        declared = container.duration / av.time_base
    indexed = indexed_end(container, stream)
    if indexed is not None and (declared is None or indexed < declared):
        return indexed
    return declared


def indexed_end(container, stream) -> float | None:
    """Where the last sample in `stream`'s index ends (seconds on the shifted timeline), for
    formats that index every sample; None otherwise."""
    if not set(container.format.name.split(",")) & _SAMPLE_INDEXED or not stream.time_base:
        return None
    entries = stream.index_entries
    if not entries:
        return None
    last = entries[len(entries) - 1].timestamp
    rate = (stream.average_rate or stream.guessed_rate) if stream.type == "video" else None
    frame = Fraction(1) / Fraction(rate) if rate else Fraction(0)  # the last sample lasts about one frame
    return float(last * stream.time_base - origin(container) + frame)


def first_frame(container, stream, *, max_packets: int = 600):
    """(the first frame of `stream` that decodes, or None; whether a packet before it had no
    timestamp). Undecodable packets are skipped; at most `max_packets` are read (a real video
    yields its first frame within a few)."""
    from .decoding import StreamDecoder

    decoder = StreamDecoder(stream)
    untimed = False
    for n, packet in enumerate(decoder.packets(container)):
        untimed |= packet.size > 0 and packet.pts is None
        for frame in decoder.decode(packet):
            return frame, untimed or frame.pts is None
        if n >= max_packets:
            break
    for frame in decoder.flush():
        return frame, untimed or frame.pts is None
    return None, untimed

"""HLS playlists of a video's CMAF fragments (pure: no I/O).

RFC 8216 (HTTP Live Streaming) and Apple's HLS Authoring Specification: fMP4 segments
with an EXT-X-MAP init segment (protocol version 7), EXTINF with the exact durations,
EXT-X-TARGETDURATION the largest duration rounded to the nearest integer (RFC 8216
4.3.3.1), one EXT-X-STREAM-INF per rendition with its peak and average bit rate measured
from the stored fragments, the audio once, as an EXT-X-MEDIA group every variant refers to.

While the video is processing the media playlists list the completed prefix of segments as
an EVENT playlist without EXT-X-ENDLIST, so a player starts at the beginning and reloads
the playlist as it grows; once ready they are VOD playlists with EXT-X-ENDLIST.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

VERSION = 7  # fMP4 segments (EXT-X-MAP in a media playlist): RFC 8216 section 7
AUDIO_GROUP = "audio"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


@dataclass(frozen=True)
class Segment:
    index: int
    duration: float  # seconds (EXTINF)
    size: int  # bytes of the fragment


@dataclass(frozen=True)
class Variant:
    """One video rendition as the master playlist describes it."""

    name: str
    width: int
    height: int
    codec: str  # RFC 6381, e.g. "avc1.640028"
    segments: Sequence[Segment]


def media_playlist(segments: Sequence[Segment], *, ended: bool, query: str = "") -> str:
    """The media playlist of one track. URIs are relative: `init.mp4`, `<index:05d>.m4s`,
    each followed by `query` (e.g. "?token=..."), so a read token travels to every request."""
    target = max((round(s.duration) for s in segments), default=1)
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VERSION}",
        f"#EXT-X-TARGETDURATION:{max(1, target)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="init.mp4{query}"',
    ]
    for seg in segments:
        lines.append(f"#EXTINF:{seg.duration:.6f},")
        lines.append(f"{seg.index:05d}.m4s{query}")
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def master_playlist(
    variants: Sequence[Variant],
    *,
    audio: Sequence[Segment] | None = None,
    audio_codec: str = "mp4a.40.2",
    frame_rate: float | None = None,
    query: str = "",
) -> str:
    """The master playlist: the audio group (when there is audio) and one variant per
    rendition, largest first. BANDWIDTH is the peak bit rate of any segment, the audio
    segment beside it included; AVERAGE-BANDWIDTH the whole track's (RFC 8216 4.3.4.2)."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="default",LANGUAGE="und",'
            f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="audio/playlist.m3u8{query}"'
        )
    audio_at = {s.index: s for s in audio or ()}
    for v in variants:
        peak, average = bandwidths(v.segments, audio_at)
        codecs = v.codec + (f",{audio_codec}" if audio is not None else "")
        attrs = [f"BANDWIDTH={peak}", f"AVERAGE-BANDWIDTH={average}", f"RESOLUTION={v.width}x{v.height}"]
        if frame_rate:
            attrs.append(f"FRAME-RATE={frame_rate:.3f}")
        attrs.append(f'CODECS="{codecs}"')
        if audio is not None:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{quote(v.name)}/playlist.m3u8{query}")
    return "\n".join(lines) + "\n"


def bandwidths(segments: Sequence[Segment], audio_at: dict[int, Segment]) -> tuple[int, int]:
    """(peak, average) bits per second of a variant with its audio; (0, 0) with no segment."""
    peak, total_bits, total_s = 0.0, 0, 0.0
    for seg in segments:
        bits = 8 * (seg.size + (audio_at[seg.index].size if seg.index in audio_at else 0))
        if seg.duration > 0:
            peak = max(peak, bits / seg.duration)
        total_bits += bits
        total_s += seg.duration
    average = total_bits / total_s if total_s > 0 else 0
    return math.ceil(peak), math.ceil(average)

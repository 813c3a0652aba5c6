"""How a video is cut: its ladder, its chunks and its segment grid (pure logic).

Chunks cut the timeline, not the ladder: each chunk task encodes every rung of its part of
the video, so one video spreads over every worker and each frame is decoded once. Chunk
starts are multiples of the segment duration, so every chunk's fragments are whole
segments of the final stream.
"""

from __future__ import annotations

import math

from shared.contracts import ChunkSpan, SourceInfo, VideoPlan

from .ladder import plan_ladder


def on_segment_grid(chunk_s: float, segment_s: float) -> bool:
    """Whether chunks of `chunk_s` seconds start on the `segment_s` grid: a whole number (at
    least 1) of segments each, to a microsecond."""
    per_chunk = round(chunk_s / segment_s)
    return per_chunk >= 1 and abs(per_chunk * segment_s - chunk_s) <= 1e-6


def plan_video(source: SourceInfo, *, chunk_s: float, segment_s: float) -> VideoPlan:
    """The plan of a probed upload.

    A source that cannot be cut safely (SourceInfo.cuttable is False: no seek index,
    timestamps going backwards or missing) or has no known duration is one chunk: the same
    code path, never a second pipeline. A last piece shorter than half a segment joins the
    chunk before it, so no task is spent on a few frames.

    Raises ValueError when chunk_s is not a positive multiple of segment_s, or the source
    has no picture size.
    """
    if segment_s <= 0 or chunk_s <= 0:
        raise ValueError("chunk and segment durations must be positive")
    if not on_segment_grid(chunk_s, segment_s):
        raise ValueError(
            f"the chunk duration ({chunk_s:g} s) must be a multiple of the segment duration ({segment_s:g} s)"
        )
    per_chunk = round(chunk_s / segment_s)
    renditions = plan_ladder(source.width or 0, source.height or 0)
    duration = source.video_duration or source.duration
    count = 1
    if source.cuttable and duration:
        count = max(1, math.ceil((duration - segment_s / 2) / chunk_s))
    chunks = [
        ChunkSpan(
            index=i,
            start=i * chunk_s,
            end=None if i == count - 1 else (i + 1) * chunk_s,
            first_segment=i * per_chunk,
        )
        for i in range(count)
    ]
    segments = max(1, math.ceil(duration / segment_s - 1e-6)) if duration else 1
    return VideoPlan(
        renditions=renditions,
        segment_s=segment_s,
        chunks=chunks,
        audio=source.audio_codec is not None,
        rotation=source.rotation,
        duration=source.duration,
        segments=segments,
    )

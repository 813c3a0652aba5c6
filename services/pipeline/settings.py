"""The pipeline's settings: the chunk and segment grid, and what an upload may be."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import Settings

from .plan import on_segment_grid
from .probe import DEFAULT_CONTAINERS


class PipelineSettings(Settings):
    segment_s: float = 6.0  # HLS segment duration, seconds; every rung has an IDR frame at each boundary
    chunk_s: float = 6.0  # seconds of the timeline per chunk task; a multiple of segment_s
    # What an upload may be (422 beyond).
    max_width: int = 4096  # displayed size, pixels
    max_height: int = 4096
    max_duration_s: float = 3 * 3600.0
    max_streams: int = Field(16, gt=0)  # streams in an upload (video, audio, subtitles, data...)
    containers: Annotated[tuple[str, ...], NoDecode] = DEFAULT_CONTAINERS  # FFmpeg demuxers, from `mov,mp4,...`
    # Probing runs in a child process, bounded.
    probe_timeout_s: float = Field(30.0, gt=0)  # wall-clock bound of probing one upload
    probe_max_memory_mb: int = Field(1024, gt=0)  # address-space bound of the probe process, MiB
    probe_window_mb: int = Field(8, gt=0)  # MiB from each end of an upload fetched for a first probe

    def upload_limits(self) -> dict[str, object]:
        """What an upload may be, as `probe` (and `probe_isolated`) take it: the settings of
        the same names."""
        names = ("max_width", "max_height", "max_duration_s", "max_streams", "containers")
        return {name: getattr(self, name) for name in names}

    @field_validator("containers", mode="before")
    @classmethod
    def _containers(cls, value):
        if not isinstance(value, str):
            return value
        return tuple(c.strip().lower() for c in value.split(",") if c.strip()) or DEFAULT_CONTAINERS

    @field_validator("segment_s")
    @classmethod
    def _segment(cls, value: float) -> float:
        if not 0.5 <= value <= 60:
            raise ValueError(f"must be between 0.5 and 60 seconds, got {value:g}")
        return value

    @model_validator(mode="after")
    def _chunk_on_segment_boundaries(self) -> Self:
        if not on_segment_grid(self.chunk_s, self.segment_s):
            raise ValueError(
                f"VIDMESH_CHUNK_S must be a multiple of VIDMESH_SEGMENT_S, got {self.chunk_s:g} and {self.segment_s:g}"
            )
        return self

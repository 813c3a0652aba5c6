"""The transcoder's settings: how x264 encodes every rung."""

from __future__ import annotations

from shared.settings import Settings


class TranscoderSettings(Settings):
    transcode_preset: str = "veryfast"  # the x264 preset of every rung
    x264_threads: int = 0  # frame threads per rung; 0: the CPUs this process may use (cgroup quota, affinity)

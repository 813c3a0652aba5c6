"""Frames turned upright by a multiple of 90 degrees (the display matrix of phone video)."""

from __future__ import annotations

import av

from .graphs import FilterChain

_STEPS = {90: [("transpose", "clock")], 270: [("transpose", "cclock")], 180: [("hflip", None), ("vflip", None)]}


class Rotation:
    """`degrees` clockwise (90, 180 or 270)."""

    def __init__(self, degrees: int):
        if degrees % 360 not in _STEPS:
            raise ValueError(f"rotation must be 90, 180 or 270 degrees, got {degrees}")
        self.chain = FilterChain(_STEPS[degrees % 360])

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        (turned,) = self.chain.push(frame)
        return turned

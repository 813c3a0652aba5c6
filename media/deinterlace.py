"""Interlaced video (1080i camcorders, broadcast transport streams, DVDs) made progressive.

FFmpeg's bwdif ("Bob Weaver" deinterlacer: edge-directed spatial interpolation with
temporal help from the fields before and after) in `send_frame` mode: one progressive
frame per interlaced frame, at the frame's own timestamp. The output keeps the source's
frame rate and its timestamps one to one, so chunk boundaries, segment IDRs and frame
counts are those of the source (send_field would double the rate and invent timestamps
between the source's). Each frame's field order comes from its own flags (parity auto):
top field first and bottom field first alike.
"""

from __future__ import annotations

import av

from .graphs import FilterChain

# AVFieldOrder: how a stream says its frames are coded
TOP_FIRST = (2, 4)  # AV_FIELD_TT, AV_FIELD_TB
BOTTOM_FIRST = (3, 5)  # AV_FIELD_BB, AV_FIELD_BT


def declared_field_order(stream) -> str | None:
    """ "tff" or "bff" when the stream says its frames are interlaced, else None."""
    order = int(stream.codec_context.field_order or 0)
    if order in TOP_FIRST:
        return "tff"
    if order in BOTTOM_FIRST:
        return "bff"
    return None


class Deinterlacer:
    """bwdif, send_frame. `flagged`: deinterlace only the frames flagged interlaced, in their
    own field order (a stream may mix progressive and interlaced frames); otherwise every
    frame, in `field_order` (for decoders that do not flag frames)."""

    def __init__(self, *, flagged: bool = True, field_order: str | None = None):
        parity = "auto" if flagged or field_order is None else field_order
        deint = "interlaced" if flagged else "all"
        self.chain = FilterChain([("bwdif", f"mode=send_frame:parity={parity}:deint={deint}")])

        self.time_base = None

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """Progressive frames; the one before `frame` comes out once `frame` is in (bwdif
        looks at the next field)."""
        self.time_base = frame.time_base
        return self._retimed(self.chain.push(frame))

    def flush(self) -> list[av.VideoFrame]:
        return self._retimed(self.chain.flush())

    def _retimed(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        # bwdif counts in half the input's time base (room for send_field's extra frames):
        # back to the source's own ticks
        for f in frames:
            if f.pts is not None and f.time_base and self.time_base and f.time_base != self.time_base:
                f.pts = round(f.pts * f.time_base / self.time_base)
                f.time_base = self.time_base
        return frames

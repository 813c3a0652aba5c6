"""The frame path: what every decoded frame goes through once, before the split to rungs.

  deinterlace -> tone map / colour conversion -> alpha flatten -> rotate -> (per rung) scale

A stage exists only when the source needs it, so an SDR progressive source without alpha
or rotation passes straight through (no filter graph, no copy). The transcoder's chunk
tasks and the thumbnailer use the same path, so a rendition and its thumbnail agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import av
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from . import alpha as alpha_mod
from .colour import REC709, RGB, Colour, reformat_colorspaces, rung_colour, source_colour, tone_map_kind
from .deinterlace import Deinterlacer, declared_field_order
from .rotate import Rotation
from .tonemap import ToneMap


class FramePath:
    """Filters the decoded frames of `stream`: `rotation` degrees clockwise (a multiple of
    90), transparency flattened on `background` (r, g, b).

    `colour` is the colour of the frames it gives out: BT.709 for HDR and BT.2020 sources
    (converted), R'G'B' for flattened R'G'B' sources, else the source's own."""

    def __init__(self, stream, *, rotation: int = 0, background: tuple[int, int, int] = alpha_mod.BLACK):
        source = source_colour(stream)
        kind = tone_map_kind(source)
        order = declared_field_order(stream)
        self.deinterlacer: Deinterlacer | None = None
        self.declared_order = order  # decided on the first frame: does the decoder flag them?
        self.first = True
        self.tone_map = ToneMap(kind) if kind else None
        self.background = background
        self.flatten: alpha_mod.Flatten | None = None
        self.turn = Rotation(rotation) if rotation % 360 else None
        self.colour = REC709 if kind else source
        self.durations: dict[int, int] = {}  # pts -> duration of frames inside the deinterlacer
        self.keep_from: int | None = None

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """The filtered frames `frame` completes, in order (the deinterlacer gives a frame
        out once it has the next one)."""
        if self.first:
            self.first = False
            self._check_alpha(frame)
            if self.declared_order:
                self.deinterlacer = Deinterlacer(flagged=frame.interlaced_frame, field_order=self.declared_order)
        if self.deinterlacer is None:
            if not frame.interlaced_frame:
                return [self._after_deinterlace(frame)]
            self.deinterlacer = Deinterlacer()  # a stream that did not say so, flagged frames
        if frame.pts is not None:
            self.durations[frame.pts] = frame.duration
        return [self._after_deinterlace(f) for f in self._restored(self.deinterlacer.push(frame))]

    def flush(self) -> list[av.VideoFrame]:
        """The frames still held (the deinterlacer's last) at the end of the input."""
        if self.deinterlacer is None:
            return []
        return [self._after_deinterlace(f) for f in self._restored(self.deinterlacer.flush())]

    def frames(self, decoded: Iterable[av.VideoFrame], *, keep_from: int | None = None) -> Iterator[av.VideoFrame]:
        """The filtered frames of `decoded`. Frames before `keep_from` (pts) only give the
        deinterlacer its context: they come out unfiltered, for the caller to drop."""
        self.keep_from = keep_from
        for frame in decoded:
            if self._early(frame) and self.deinterlacer is None and not frame.interlaced_frame:
                yield frame
                continue
            yield from self.push(frame)
        yield from self.flush()

    def _early(self, frame: av.VideoFrame) -> bool:
        return self.keep_from is not None and frame.pts is not None and frame.pts < self.keep_from

    def _after_deinterlace(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self._early(frame):
            return frame  # context only: the caller drops it
        duration = frame.duration
        if self.tone_map is not None:
            frame = self.tone_map(frame)
        if self.flatten is not None:
            frame = self.flatten(frame)
        if self.turn is not None:
            frame = self.turn(frame)
        frame.duration = duration  # an animation's last delay lives only here
        return frame

    def _restored(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        # bwdif does not carry each frame's duration through
        for f in frames:
            if f.pts is not None:
                f.duration = self.durations.pop(f.pts, f.duration) or f.duration
        return frames

    def _check_alpha(self, frame: av.VideoFrame) -> None:
        if alpha_mod.has_alpha(frame.format):
            self.flatten = alpha_mod.Flatten(self.background)
            fmt = frame.format
            if (fmt.is_rgb or fmt.has_palette or len(fmt.components) == 2) and self.tone_map is None:
                self.colour = Colour(primaries=self.colour.primaries, transfer=self.colour.transfer, matrix=RGB)


class RungScaler:
    """Frames of colour `frames` -> yuv420p width x height frames in `out` colour (limited
    range), bilinear: one persistent swscale context per rung (measured: -29% of the
    ladder's time against a new one per frame). The matrix is converted in the same pass when it changes."""

    def __init__(self, width: int, height: int, frames: Colour, out: Colour | None = None):
        self.width, self.height = width, height
        self.out = out or rung_colour(frames, width, height)
        self.src_colorspace, self.dst_colorspace = reformat_colorspaces(frames, self.out)
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        return self.reformatter.reformat(
            frame,
            width=self.width,
            height=self.height,
            format="yuv420p",
            src_colorspace=self.src_colorspace,
            dst_colorspace=self.dst_colorspace,
            interpolation=Interpolation.BILINEAR,
            src_color_range=frame.color_range,  # full-range sources keep their contrast
            dst_color_range=ColorRange.MPEG,
        )

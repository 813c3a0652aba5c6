"""A linear FFmpeg filter chain fed one frame at a time (PyAV's filter graph), rebuilt when
the frames' size or pixel format changes."""

from __future__ import annotations

from fractions import Fraction

import av

_DEFAULT_TIME_BASE = Fraction(1, 90000)


class FilterChain:
    """`steps`: [(filter name, its arguments or None)], applied in order."""

    def __init__(self, steps: list[tuple[str, str | None]]):
        self.steps = steps
        self.graph: av.filter.Graph | None = None
        self.key = None

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """The frames the chain gives out after taking `frame` (none while a filter waits for
        the next one, as a deinterlacer does)."""
        key = (frame.width, frame.height, frame.format.name)
        out = self.flush() if self.graph is not None and key != self.key else []
        if self.graph is None:
            self._build(frame)
            self.key = key
        self.graph.push(frame)
        return out + self._drain()

    def flush(self) -> list[av.VideoFrame]:
        """The frames still held at the end of the stream; the chain is rebuilt on the next push."""
        if self.graph is None:
            return []
        self.graph.push(None)
        frames = self._drain()
        self.graph = None
        return frames

    def _drain(self) -> list[av.VideoFrame]:
        frames = []
        while True:
            try:
                frames.append(self.graph.pull())
            except (BlockingIOError, av.error.EOFError):
                return frames

    def _build(self, frame: av.VideoFrame) -> None:
        graph = av.filter.Graph()
        node = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format.name,
            time_base=frame.time_base or _DEFAULT_TIME_BASE,
        )
        for name, args in self.steps:
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        node.link_to(graph.add("buffersink"))
        graph.configure()
        self.graph = graph

"""Decoding that survives damage: a packet the decoder refuses is skipped and counted, not
fatal (what the ffmpeg CLI does), so one scrambled audio frame does not cost the video.

VP9 with an alpha plane (WebM `AlphaMode`) is decoded with libvpx: FFmpeg's native vp9
decoder ignores the alpha that WebM carries beside each frame (BlockAdditional).
"""

from __future__ import annotations

import av

MAX_READ_ERRORS = 32  # demuxer errors in a row before the rest of the file counts as unreadable


class StreamDecoder:
    """Decode one stream of a container, frame-threaded; `skipped` counts the packets the
    decoder refused and the reads the demuxer failed."""

    def __init__(self, stream, *, threads: bool = True):
        self.stream = stream
        self.skipped = 0
        self.separate = _needs_libvpx(stream)
        if self.separate:
            self.ctx = av.CodecContext.create("libvpx-vp9", "r")
        else:
            self.ctx = stream.codec_context
            if threads and not self.ctx.is_open:
                self.ctx.thread_type = "AUTO"  # frame threads: decode alone 2.5 s -> 1.5 s at 1080p

    def packets(self, container):
        """The stream's packets in file order; a read the demuxer fails is counted and the
        demuxer goes on from where it is, up to MAX_READ_ERRORS failures in a row."""
        errors = 0
        while True:
            try:
                for packet in container.demux(self.stream):
                    errors = 0
                    yield packet
                return
            except av.error.EOFError:
                return
            except av.error.FFmpegError:
                self.skipped += 1
                errors += 1
                if errors >= MAX_READ_ERRORS:
                    return

    def decode(self, packet) -> list:
        """The frames `packet` completes; [] when the decoder refuses it (counted)."""
        try:
            return self.ctx.decode(packet)
        except av.error.EOFError:
            return []
        except av.error.FFmpegError:
            if packet.size:
                self.skipped += 1
            return []

    def flush(self) -> list:
        """The frames still held in the decoder at the end of the stream."""
        try:
            return self.ctx.decode(None)
        except av.error.FFmpegError:
            return []

    def frames(self, container):
        """Every frame of the stream that decodes, in presentation order."""
        for packet in self.packets(container):
            yield from self.decode(packet)
        yield from self.flush()

    def seek(self, container, target: int) -> None:
        """Seek the container to the keyframe at or before `target` (stream ticks); the
        decoder starts afresh."""
        container.seek(target, stream=self.stream, backward=True)
        if self.separate:
            self.ctx.flush_buffers()


def _needs_libvpx(stream) -> bool:
    return stream.codec_context.name == "vp9" and str(stream.metadata.get("alpha_mode", "")).strip() == "1"

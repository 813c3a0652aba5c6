"""Encode a video's whole audio track once into CMAF fragments on the video's segment grid.

Pure PyAV: no bus, no HTTP. AAC-LC, 48 kHz stereo. One task encodes the whole track, so
no chunk boundary cuts an AAC frame and the audio stays continuous over the whole file.
A segment's fragment holds the AAC frames whose presentation starts in the segment
(frames are 1024 samples, 21.3 ms, so a fragment starts up to one frame after the video
segment it sits beside).

Timeline: the encoder's first packet is its priming (1024 samples before the first input
sample). Fragments carry the encoder's own timeline, priming included, from 0 (a `tfdt`
cannot be negative), so a track is `priming` samples behind the video in a player that
ignores it; the MP4 stitch shifts it back (the muxer then writes an edit list).

Damage is not fatal: a packet the decoder refuses is skipped, counted and replaced by as
much silence as it held, so the rest stays in sync; a track that ends before its declared
duration, or that cannot be decoded at all, leaves a warning (the video is then silent
from there), never a failed video.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

from media.decoding import StreamDecoder
from media.problems import Cancelled, MediaError, MediaWarning
from media.source import audio_stream, expected_end, open_source, origin

from . import cmaf
from .chunk import Segment
from .timeline import AUDIO_RATE, damaged_packets, segment_grid, shortfall

TRACK = "audio"
GAP_MIN = AUDIO_RATE // 1000  # a skipped packet leaves at least this much silence (1 ms)


@dataclass(frozen=True)
class AudioResult:
    """What encode_audio wrote under out_dir: `audio/init.mp4` and `audio/<index>.m4s`."""

    segments: list[Segment] = field(default_factory=list)
    init_size: int = 0
    priming: int = 0  # samples of encoder delay at the start of the track (48 kHz)
    end: float = 0.0  # seconds: where the audio ends on the video's timeline
    warnings: list[MediaWarning] = field(default_factory=list)


def init_path(out_dir: str) -> str:
    return os.path.join(out_dir, TRACK, "init.mp4")


def segment_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, TRACK, f"{index:05d}.m4s")


def encode_audio(
    src: str | BinaryIO,
    out_dir: str,
    *,
    segment_s: float,
    bitrate_kbps: int = 128,
    on_segment: Callable[[Segment], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AudioResult:
    """Encode the first audio track of `src` into `out_dir/audio/`.

    `on_segment(segment)` is called in the calling thread as soon as each fragment file is
    written (for uploading while the rest encodes). Returns an empty AudioResult when the
    source has no audio, and one with no segments and a warning when its audio cannot be
    decoded at all. Raises MediaError("bad_media") when the source cannot be opened,
    Cancelled when should_stop() says so.
    """
    inp = open_source(src)
    with inp:
        stream = audio_stream(inp)
        if stream is None:
            return AudioResult()
        track = _Track(inp, stream, out_dir, segment_grid(segment_s), bitrate_kbps)
        track.on_segment = on_segment or (lambda _s: None)
        track.should_stop = should_stop or (lambda: False)
        try:
            return track.run()
        except av.error.FFmpegError as e:
            raise MediaError("encode_failed", f"encoding the audio failed: {e.strerror or e}") from None


class _Track:
    def __init__(self, inp, stream, out_dir: str, grid: Fraction, bitrate_kbps: int):
        self.inp, self.stream, self.out_dir, self.grid = inp, stream, out_dir, grid
        self.decoder = StreamDecoder(self.stream)
        self.origin = origin(inp)
        self.enc = av.CodecContext.create("aac", "w")
        self.enc.sample_rate, self.enc.layout, self.enc.format = AUDIO_RATE, "stereo", "fltp"
        self.enc.bit_rate = bitrate_kbps * 1000
        self.enc.time_base = Fraction(1, AUDIO_RATE)
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self.next_pts: int | None = None  # where the next input sample goes (48 kHz ticks)
        self.first_in: int | None = None
        self.priming: int | None = None
        self.segment: int | None = None
        self.packets: list = []  # of the segment being filled
        self.segments: list[Segment] = []
        self.init: bytes | None = None
        self.gap = False  # a packet was skipped since the last frame

    def run(self) -> AudioResult:
        os.makedirs(os.path.join(self.out_dir, TRACK), exist_ok=True)
        for packet in self.decoder.packets(self.inp):
            if self.should_stop():
                raise Cancelled("audio cancelled")
            skipped = self.decoder.skipped
            frames = self.decoder.decode(packet)
            if self.decoder.skipped > skipped:
                self.gap = True  # what it held becomes silence, if the next frame says how long
            for frame in frames:
                for out in self.resampler.resample(frame):
                    self._encode(out)
        for frame in self.decoder.flush():
            for out in self.resampler.resample(frame):
                self._encode(out)
        for out in self.resampler.resample(None):
            self._encode(out)
        for packet in self.enc.encode(None):
            self._packet(packet)
        if self.packets:
            self._flush()
        damaged = damaged_packets(self.decoder.skipped, "audio")
        warnings = [damaged] if damaged else []
        if self.next_pts is None:
            warnings.append(MediaWarning("damaged_packets", "the audio track cannot be decoded: the video is silent"))
            return AudioResult(warnings=warnings)
        end = self.next_pts / AUDIO_RATE
        short = shortfall(end, expected_end(self.inp, self.stream), "audio")
        warnings += [short] if short else []
        return AudioResult(
            segments=self.segments,
            init_size=len(self.init or b""),
            priming=self.priming or 0,
            end=end,
            warnings=warnings,
        )

    def _encode(self, frame: av.AudioFrame) -> None:
        # The resampler keeps the source time base when it has nothing to convert, and
        # uses 1/48000 otherwise: rescale from whatever the frame says.
        pts = None
        if frame.pts is not None and frame.time_base:
            pts = round((frame.pts * frame.time_base - self.origin) * AUDIO_RATE)
        if self.next_pts is None:
            pts = max(0, pts or 0)
        elif self.gap and pts is not None and pts - self.next_pts >= GAP_MIN:
            self._silence(pts - self.next_pts)  # a skipped packet's time, kept
            pts = self.next_pts
        elif pts is None or abs(pts - self.next_pts) < AUDIO_RATE // 10:
            pts = self.next_pts  # contiguous: ignore jitter (Matroska rounds to 1 ms)
        else:
            pts = max(pts, self.next_pts)  # keep a real gap, never go backwards
        self.gap = False
        if self.first_in is None:
            self.first_in = pts
        frame.pts, frame.time_base = pts, Fraction(1, AUDIO_RATE)
        self.next_pts = pts + frame.samples
        for packet in self.enc.encode(frame):
            self._packet(packet)

    def _silence(self, samples: int) -> None:
        """Encode `samples` of silence at next_pts (where undecodable packets were)."""
        while samples > 0:
            n = min(samples, 1024)
            frame = av.AudioFrame.from_ndarray(np.zeros((2, n), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self.next_pts, Fraction(1, AUDIO_RATE)
            self.next_pts += n
            samples -= n
            for packet in self.enc.encode(frame):
                self._packet(packet)

    def _packet(self, packet: av.Packet) -> None:
        if self.priming is None:
            self.priming = max(0, (self.first_in or 0) - packet.pts)
        index = max(0, math.floor(Fraction(packet.pts, AUDIO_RATE) / self.grid))
        if self.segment is not None and index > self.segment:
            self._flush()
        if self.segment is None or index > self.segment:
            self.segment = index
        self.packets.append((bytes(packet), packet.pts, packet.duration or 1024))

    def _flush(self) -> None:
        """Mux the packets of one segment into a fragment (a fresh muxer each time: FFmpeg's
        mp4 muxer fragments audio only at the end, and `frag_discont` keeps each fragment's
        `tfdt` on the track's timeline)."""
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4", options=cmaf.MUXER_OPTIONS) as out:
            st = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            st.codec_context.extradata = self.enc.extradata
            st.codec_context.bit_rate = self.enc.bit_rate
            st.time_base = Fraction(1, AUDIO_RATE)
            for data, pts, duration in self.packets:
                packet = av.Packet(data)
                packet.pts = packet.dts = pts + self.priming
                packet.duration, packet.time_base, packet.stream = duration, Fraction(1, AUDIO_RATE), st
                packet.is_keyframe = True
                out.mux(packet)
        try:
            init, fragments = cmaf.split(buf.getvalue())
        except cmaf.CmafError as exc:
            raise MediaError("encode_failed", f"the muxer wrote no CMAF audio: {exc}") from None
        if self.init is None:
            self.init = init
            with open(init_path(self.out_dir), "wb") as fh:
                fh.write(init)
        data = b"".join(f.data for f in fragments)
        with open(segment_path(self.out_dir, self.segment), "wb") as fh:
            fh.write(data)
        first, last_pts, last_duration = self.packets[0][1], self.packets[-1][1], self.packets[-1][2]
        start = max(0, first) / AUDIO_RATE
        segment = Segment(
            index=self.segment,
            start=start,
            duration=(last_pts + last_duration) / AUDIO_RATE - start,
            sizes={TRACK: len(data)},
        )
        self.segments.append(segment)
        self.packets = []
        self.on_segment(segment)

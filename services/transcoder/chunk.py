"""Encode one chunk of a video's timeline into every rung of the ladder, as CMAF fragments.

Pure PyAV: no bus, no HTTP. Each source frame of the chunk is decoded once and filtered
once (media.frames: deinterlace, tone map / colour conversion, alpha flatten, rotation),
then scaled and encoded for every rung, each tagged with its colour (media.colour). Every rung gets an IDR frame at
every segment boundary, forced by timestamp (so VFR sources align too), and x264 places no
other keyframe, so each rung's segments start at the same instants and a player can switch
between rungs at any segment. FFmpeg's mp4 muxer writes the fragments (see cmaf.py).

The chunk is frames with start <= t < end, t on the source timeline shifted to start at 0.
The task seeks to the keyframe at or before its start, decodes forward and drops the
frames before it (if the demuxer lands late, it seeks again further back). Chunk 0 also
takes any frame before 0; the last chunk has no end.

Damage is not fatal: undecodable packets are skipped and counted, and a video that ends
before the duration its file declares gives what is there; both come back as warnings.
Only a video with no decodable frame at all fails (bad_media).

Speed levers measured on a 2-core machine (PyAV 18.1, a 10 s 1080p ladder): decoder and encoder frame threads,
one persistent bilinear VideoReformatter per rung, each frame decoded once.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, Protocol

import av

from media.alpha import BLACK
from media.colour import tag
from media.decoding import StreamDecoder
from media.frames import FramePath, RungScaler
from media.problems import Cancelled, MediaError, MediaWarning
from media.source import ANIMATED_IMAGE_FORMATS, expected_end, open_media, origin, video_stream

from . import cmaf
from .timeline import damaged_packets, segment_grid, shortfall

PROGRESS_INTERVAL_S = 1.0  # at most one progress callback per interval
SEEK_BACK_S = (0.0, 1.0, 4.0, 16.0)  # where to seek before the start when the demuxer lands late


class Rung(Protocol):
    """What encoding needs of a rendition (shared.contracts.RenditionSpec has it)."""

    name: str
    width: int
    height: int
    crf: int
    maxrate_kbps: int
    bufsize_kbit: int
    profile: str
    level: str


@dataclass(frozen=True)
class Segment:
    index: int  # in the whole video
    start: float  # seconds, on the output timeline
    duration: float  # seconds
    sizes: dict[str, int] = field(default_factory=dict)  # rung -> bytes of its fragment


@dataclass(frozen=True)
class ChunkResult:
    """What encode_chunk wrote under out_dir: `<rung>/init.mp4` and `<rung>/<index>.m4s`."""

    segments: list[Segment]
    inits: dict[str, str]  # rung -> SHA-256 (hex) of its init segment
    codecs: dict[str, str]  # rung -> RFC 6381 codec string
    frames: int  # frames encoded (per rung)
    end: float  # seconds: where the chunk's last frame ends
    warnings: list[MediaWarning] = field(default_factory=list)  # damage skipped, media ending early


def init_path(out_dir: str, rung: str) -> str:
    return os.path.join(out_dir, rung, "init.mp4")


def segment_path(out_dir: str, rung: str, index: int) -> str:
    return os.path.join(out_dir, rung, f"{index:05d}.m4s")


def encode_chunk(
    src: str | BinaryIO,
    out_dir: str,
    *,
    rungs: Sequence[Rung],
    segment_s: float,
    first_segment: int = 0,
    end_segment: int | None = None,
    rotation: int = 0,
    background: tuple[int, int, int] = BLACK,
    preset: str,
    threads: int = 0,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ChunkResult:
    """Encode the frames from segment `first_segment` up to segment `end_segment`
    (exclusive; None: to the end of the video) of `src` into every rung.

    `segment_s` is the segment duration in seconds; chunk boundaries are multiples of it.
    `rotation` (degrees clockwise, a multiple of 90) turns frames upright; transparency is
    flattened on `background` (r, g, b). Each rung's width x height must be even.
    `on_progress(n)` is called (about once a second at most) with the segments of this
    chunk finished so far. A chunk that reaches the end of the video compares it with the
    duration the file declares: short of it, the result has a "truncated" warning.

    Raises MediaError("bad_media") when chunk 0 finds no decodable video frame,
    MediaError("encode_failed") when writing fails, Cancelled when should_stop() says so.
    """
    for r in rungs:
        if r.width <= 0 or r.height <= 0 or r.width % 2 or r.height % 2:
            raise ValueError(f"rung {r.name}: size must be positive and even, got {r.width}x{r.height}")
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    if end_segment is not None and end_segment <= first_segment:
        raise ValueError(f"empty chunk: segments {first_segment}..{end_segment}")
    inp, fmt = open_media(src)
    try:
        with inp:
            job = _Chunk(
                inp, out_dir, rungs, segment_grid(segment_s), first_segment, end_segment, rotation % 360, background
            )
            job.on_progress = on_progress or (lambda _n: None)
            job.should_stop = should_stop or (lambda: False)
            # An animation's frame delays are irregular by design (10 ms to seconds): x264
            # derives a B-frame's decode time from earlier frames, so in MP4 a reordered
            # frame would borrow its neighbour's duration. Animations are small: no B-frames.
            job.bframes = fmt not in ANIMATED_IMAGE_FORMATS
            job.threads = threads
            return job.run(preset)
    except av.error.FFmpegError as e:
        raise MediaError("encode_failed", f"writing the chunk failed: {e.strerror or e}") from None


class _Chunk:
    def __init__(self, inp, out_dir, rungs, grid, first_segment, end_segment, rotation, background):
        self.inp, self.out_dir, self.rungs, self.grid = inp, out_dir, list(rungs), grid
        self.vin = video_stream(inp)
        self.decoder = StreamDecoder(self.vin)
        self.path = FramePath(self.vin, rotation=rotation, background=background)
        self.tb = self.vin.time_base
        self.origin_ticks = math.floor(origin(inp) / self.tb)  # the timeline's zero, in ticks
        self.first_segment, self.end_segment, self.rotation = first_segment, end_segment, rotation
        self.start = grid * first_segment  # seconds (exact)
        self.end = None if end_segment is None else grid * end_segment
        self.bframes = True
        self.threads = 0
        self.scalers = {r.name: RungScaler(r.width, r.height, self.path.colour) for r in self.rungs}
        self.outputs: dict = {}
        self.segments: list[tuple[int, int]] = []  # (index, start pts) of each segment begun
        self.pending = None  # the frame waiting for its successor to know its duration
        self.frames = 0
        self.durations: dict[int, int] = {}  # pts -> duration (ticks) of each frame encoded
        self.last_pts: int | None = None
        rate = self.vin.average_rate or self.vin.guessed_rate or 30
        self.rate = rate
        self.vstep = max(1, round(1 / (rate * self.tb)))  # one frame, in time-base ticks

    # --- the frame path --------------------------------------------------------------------

    def run(self, preset: str) -> ChunkResult:
        os.makedirs(self.out_dir, exist_ok=True)
        expected = expected_end(self.inp, self.vin)
        try:
            for r in self.rungs:
                self.outputs[r.name] = self._open_output(r, preset)
            end_pts, at_eof = self._decode_and_encode()
            if self.pending is None:
                if self.first_segment == 0:
                    why = f" ({self.decoder.skipped} undecodable packets)" if self.decoder.skipped else ""
                    raise MediaError("bad_media", f"no video frame could be decoded{why}")
                # A chunk past the video's end is empty: the plan counts the longest stream,
                # or the duration a file cut short still declares (the chunk that holds the
                # last frame reports how much is missing). A chunk inside a still stretch of
                # a VFR video (a screen recording writes no frame while nothing changes) is
                # empty too: the frame before it lasts until the one after it.
                return ChunkResult(
                    segments=[], inits={}, codecs={}, frames=0, end=float(self.start), warnings=self._warnings()
                )
            self._emit(self.pending, end_pts)
            for out, stream in self.outputs.values():
                out.mux(self._timed(stream.encode(None)))
        finally:
            for out, _ in self.outputs.values():
                out.close()
        end_s = float(end_pts * self.tb)
        warnings = self._warnings()
        if at_eof:
            short = shortfall(end_s, expected, "video")
            warnings += [short] if short else []
        return self._cut(end_s, warnings)

    def _warnings(self) -> list[MediaWarning]:
        damaged = damaged_packets(self.decoder.skipped, "video")
        return [damaged] if damaged else []

    def _decode_and_encode(self) -> tuple[int, bool]:
        """Decode the chunk, encode every kept frame but the last (pending); return where
        the last frame ends (pts) and whether the video ended before the chunk did."""
        first_tick = None if self.first_segment == 0 else math.ceil(self.start / self.tb)
        end_tick = None if self.end is None else math.ceil(self.end / self.tb)
        last_report = time.monotonic()
        reported = 0
        keep_from = None if first_tick is None else first_tick + self.origin_ticks
        for frame in self.path.frames(self._frames(), keep_from=keep_from):
            if self.should_stop():
                raise Cancelled("chunk cancelled")
            pts = self._pts(frame)
            if first_tick is not None and pts < first_tick:
                continue  # decoded from the keyframe before the chunk: not ours
            if end_tick is not None and pts >= end_tick:
                return pts, False  # the next chunk's first frame: ours end where it starts
            self._push(frame, pts)
            done = len(self.segments) - 1
            now = time.monotonic()
            if done > reported and now - last_report >= PROGRESS_INTERVAL_S:
                self.on_progress(done)
                reported, last_report = done, now
        if self.pending is None:
            return 0, True
        frame, pts, _ = self.pending
        return pts + max(1, frame.duration or self.vstep), True

    def _frames(self):
        """Decoded frames from the keyframe at or before the chunk's start."""
        if self.first_segment == 0:
            yield from self.decoder.frames(self.inp)
            return
        for back in SEEK_BACK_S:
            target = self.origin_ticks + math.floor((self.start - back) / self.tb)
            try:
                self.decoder.seek(self.inp, max(target, self.origin_ticks))
            except av.error.FFmpegError as e:
                raise MediaError("bad_media", f"cannot seek to {float(self.start):.2f} s: {e.strerror or e}") from None
            frames = self.decoder.frames(self.inp)
            first = next(frames, None)
            if first is None:
                return
            landed = self._pts(first) * self.tb
            if landed <= self.start or target <= self.origin_ticks or back == SEEK_BACK_S[-1]:
                self.last_pts = None
                yield first
                yield from frames
                return
            self.last_pts = None  # landed after the start: frames would be lost, go further back
        return

    def _pts(self, frame) -> int:
        """The frame's timestamp on the output timeline (ticks of the source time base), strictly
        increasing: frames without one follow the last at the nominal rate."""
        if frame.pts is None:
            pts = 0 if self.last_pts is None else self.last_pts + self.vstep
        else:
            pts = frame.pts - self.origin_ticks
            if self.first_segment == 0:
                pts = max(0, pts)
            if self.last_pts is not None and pts <= self.last_pts:
                pts = self.last_pts + 1  # the muxer refuses non-increasing timestamps
        self.last_pts = pts
        return pts

    def _push(self, frame, pts: int) -> None:
        """Queue a frame: the previous one is encoded now that its duration is known."""
        if self.pending is not None:
            self._emit(self.pending, pts)
        index = max(self.first_segment, math.floor(pts * self.tb / self.grid))
        if self.end_segment is not None:
            index = min(index, self.end_segment - 1)
        key = not self.segments or index > self.segments[-1][0]
        if key:
            self.segments.append((index, pts))
        self.pending = (frame, pts, key)

    def _emit(self, pending, next_pts: int) -> None:
        frame, pts, key = pending
        self.durations[pts] = next_pts - pts
        for r in self.rungs:
            out, stream = self.outputs[r.name]
            scaled = self.scalers[r.name](frame)
            scaled.pts, scaled.time_base = pts, self.tb
            scaled.duration = next_pts - pts
            # An IDR at each segment start, none elsewhere (x264's own are off).
            scaled.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
            out.mux(self._timed(stream.encode(scaled)))
        self.frames += 1

    def _timed(self, packets):
        """Give packets their frame's duration: libx264 returns none, and the muxer then makes
        the last sample of each fragment last 1/average rate, so on a VFR source fragments
        would not meet (a gap or an overlap at each segment boundary, a hole as long as any
        still stretch)."""
        for packet in packets:
            packet.duration = self.durations.get(packet.pts, packet.duration)
        return packets

    def _open_output(self, r: Rung, preset: str):
        os.makedirs(os.path.join(self.out_dir, r.name), exist_ok=True)
        out = av.open(os.path.join(self.out_dir, f"{r.name}.mp4"), "w", format="mp4", options=cmaf.MUXER_OPTIONS)
        stream = out.add_stream("libx264", rate=self.rate)
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = r.width, r.height, "yuv420p"
        ctx.time_base = self.tb  # keep source timestamps exact (VFR stays VFR)
        ctx.sample_aspect_ratio = Fraction(1, 1)
        tag(ctx, self.scalers[r.name].out)  # primaries, transfer, matrix, limited range: in the SPS (VUI) and colr
        ctx.thread_type = "AUTO"  # frame threads, as the ffmpeg CLI; the SLICE default is slower
        stream.options = x264_options(r, preset, bframes=self.bframes, threads=self.threads)
        return out, stream

    # --- cutting the muxer's output into segments ------------------------------------------

    def _cut(self, end_s: float, warnings: list[MediaWarning]) -> ChunkResult:
        inits, codecs = {}, {}
        sizes: dict[int, dict[str, int]] = {index: {} for index, _ in self.segments}
        for r in self.rungs:
            path = os.path.join(self.out_dir, f"{r.name}.mp4")
            with open(path, "rb") as fh:  # read piece by piece: memory stays flat in the chunk's length
                try:
                    init, fragments = cmaf.split_file(fh)
                except cmaf.CmafError as exc:
                    raise MediaError("encode_failed", f"{r.name}: the muxer wrote no CMAF: {exc}") from None
                if len(fragments) != len(self.segments):
                    raise MediaError(
                        "encode_failed", f"{r.name}: {len(fragments)} fragments for {len(self.segments)} segments"
                    )
                with open(init_path(self.out_dir, r.name), "wb") as out:
                    out.write(init)
                inits[r.name] = hashlib.sha256(init).hexdigest()
                codecs[r.name] = cmaf.avc_codec_string(init) or "avc1"
                for (index, _), fragment in zip(self.segments, fragments):
                    cmaf.copy_range(fh, fragment.offset, fragment.size, segment_path(self.out_dir, r.name, index))
                    sizes[index][r.name] = fragment.size
            os.remove(path)
        segments = []
        starts = [float(pts * self.tb) for _, pts in self.segments] + [end_s]
        for n, (index, _) in enumerate(self.segments):
            segments.append(
                Segment(index=index, start=starts[n], duration=starts[n + 1] - starts[n], sizes=sizes[index])
            )
        return ChunkResult(
            segments=segments, inits=inits, codecs=codecs, frames=self.frames, end=end_s, warnings=warnings
        )


def x264_options(r: Rung, preset: str, *, bframes: bool = True, threads: int = 0) -> dict[str, str]:
    """libx264 options of one rung: capped CRF, profile and level from the ladder; keyframes
    only where a frame is marked as one (no scene cuts, no interval), always as IDR; the
    preset's B-frames unless `bframes` is False; `threads` frame threads (0: x264's own
    choice, 1.5 per CPU it sees, which on a big node means memory for dozens of frames)."""
    params = ["scenecut=0", "keyint=infinite"] + ([] if bframes else ["bframes=0"])
    if r.maxrate_kbps:
        params += [f"vbv-maxrate={r.maxrate_kbps}", f"vbv-bufsize={r.bufsize_kbit or 2 * r.maxrate_kbps}"]
    options = {"preset": preset, "crf": str(r.crf), "forced-idr": "1", "x264-params": ":".join(params)}
    if threads > 0:
        options["threads"] = str(threads)
    if r.profile:
        options["profile"] = r.profile
    if r.level:
        options["level"] = r.level
    return options

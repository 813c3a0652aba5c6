"""Chunked encoding, the media path of the mesh without a broker: probe -> plan_video ->
encode_chunk for every chunk (each into its own directory, as on separate workers) ->
encode_audio -> each track's init segment and fragments concatenated -> stitch.

What a viewer would notice is checked against the source itself: every frame is there once
(none lost or doubled where chunks meet), at its own timestamp, looking like the source
frame at that instant (PSNR of the luma against a direct decode and scale); every rung has
its IDR frames at the same instants on the segment grid; the fragments are the CMAF an HLS
player gets (tfdt on the source timeline, one init segment per rung whatever chunk wrote
it); audio stays in sync.

Segments and chunks are 1-2 s here (6 s in production) so that clips of a few seconds have
several chunks and the suite stays fast.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import msgspec
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from media.problems import Cancelled, MediaError
from services.pipeline.ladder import plan_ladder
from services.pipeline.plan import plan_video
from services.pipeline.probe import probe
from services.transcoder import audio as audio_mod
from services.transcoder import chunk as chunk_mod
from services.transcoder import cmaf
from services.transcoder.audio import encode_audio
from services.transcoder.chunk import encode_chunk
from services.transcoder.stitch import stitch
from tests.clips import make_audio_only, make_clip, make_truncated, make_vfr_clip

SEGMENT_S = 1.0
AAC_FRAME_S = 1024 / 48000
MIN_PSNR_DB = 30.0
# Times agree to a tick of the source's time base; the container's start (the timeline's
# zero) is in microseconds, so a 90 kHz MPEG-TS tick may round either way.
EXACT = Fraction(1, 10000)


# --- the pipeline, as the mesh runs it --------------------------------------------------------


@dataclass
class Chunk:
    span: object  # ChunkSpan
    dir: Path
    result: object  # ChunkResult


@dataclass
class Run:
    src: str
    info: object  # SourceInfo
    plan: object  # VideoPlan
    chunks: list[Chunk]
    audio: object | None  # AudioResult
    audio_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)  # rung -> stitched MP4
    stitched: dict[str, object] = field(default_factory=dict)  # rung -> StitchResult
    preset: str = "ultrafast"
    seconds: float = 0.0


def run_pipeline(src, out: Path, *, chunk_s: float, segment_s: float = SEGMENT_S, preset: str = "ultrafast") -> Run:
    started = time.monotonic()
    src = str(src)
    info = probe(src)
    plan = plan_video(info, chunk_s=chunk_s, segment_s=segment_s)
    chunks = []
    for span in plan.chunks:
        # the task message carries the span; the worker turns its end into a segment index
        end_segment = None if span.end is None else round(span.end / plan.segment_s)
        d = out / f"chunk{span.index}"
        result = encode_chunk(
            src,
            str(d),
            rungs=plan.renditions,
            segment_s=plan.segment_s,
            first_segment=span.first_segment,
            end_segment=end_segment,
            rotation=plan.rotation,
            preset=preset,
        )
        chunks.append(Chunk(span, d, result))
    audio_dir = out / "audio-task"
    sound = encode_audio(src, str(audio_dir), segment_s=plan.segment_s) if plan.audio else None
    run = Run(src, info, plan, chunks, sound, audio_dir, preset=preset)

    audio_track = None
    if sound is not None and sound.segments:
        audio_track = out / "audio.cmaf"
        parts = [audio_mod.init_path(str(audio_dir))]
        parts += [audio_mod.segment_path(str(audio_dir), s.index) for s in sound.segments]
        _concat(parts, audio_track)
    for rung in plan.renditions:
        # the stored init is chunk 0's (every chunk writes the same one); then the fragments
        # in segment order, whichever chunk wrote them
        parts = [chunk_mod.init_path(str(chunks[0].dir), rung.name)]
        for c in chunks:
            parts += [chunk_mod.segment_path(str(c.dir), rung.name, s.index) for s in c.result.segments]
        track = out / f"{rung.name}.cmaf"
        _concat(parts, track)
        dst = out / f"{rung.name}.mp4"
        run.stitched[rung.name] = stitch(
            str(track),
            str(dst),
            audio=str(audio_track) if audio_track else None,
            audio_priming=sound.priming if sound else 0,
        )
        run.outputs[rung.name] = dst
    run.seconds = time.monotonic() - started
    return run


def _concat(paths, dst: Path) -> None:
    with open(dst, "wb") as out:
        for p in paths:
            with open(p, "rb") as fh:
                out.write(fh.read())


# --- what a decoder sees -----------------------------------------------------------------------


@dataclass
class Video:
    times: list[Fraction]  # presentation times (seconds), from the container's start
    lumas: list[np.ndarray]  # studio-range luma of each frame, turned upright
    keys: list[Fraction]  # times of the key frames
    start: Fraction | None  # the video stream's start time
    duration: Fraction | None  # the video stream's declared duration
    end: Fraction  # where the last frame ends
    frame: Fraction  # one nominal frame (seconds)
    audio_start: Fraction | None = None
    audio_end: Fraction | None = None  # where the decoded audio ends
    audio_declared: Fraction | None = None  # the audio stream's declared duration
    audio_onset: Fraction | None = None  # where the clips' tone becomes audible
    info: dict = field(default_factory=dict)


def decode(path, *, rotation: int = 0) -> Video:
    """Every frame of a file, as a player gets it (edit lists applied), turned by `rotation`."""
    reformatter = VideoReformatter()
    with av.open(str(path)) as c:
        origin = Fraction(c.start_time or 0, av.time_base)
        v = c.streams.video[0]
        v.codec_context.thread_type = "AUTO"
        times, lumas, keys, ends = [], [], [], []
        first = None
        for frame in c.decode(v):
            first = first or frame
            t = frame.pts * frame.time_base - origin
            times.append(t)
            ends.append(t + (frame.duration or 0) * frame.time_base)
            if frame.key_frame:
                keys.append(t)
            # luma in studio range whatever the source range, as the product converts it
            studio = reformatter.reformat(
                frame, format="yuv444p", src_color_range=frame.color_range, dst_color_range=ColorRange.MPEG
            )
            y = luma(studio)
            lumas.append(np.ascontiguousarray(np.rot90(y, -(rotation // 90))))
        rate = v.average_rate or v.guessed_rate or 30
        step = Fraction(1) / Fraction(rate)
        video = Video(
            times=times,
            lumas=lumas,
            keys=keys,
            start=None if v.start_time is None else v.start_time * v.time_base - origin,
            duration=None if not v.duration else v.duration * v.time_base,
            end=ends[-1] if ends[-1] > times[-1] else times[-1] + step,  # a frame without a duration lasts one
            frame=step,
        )
        video.info = {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "size": (first.width, first.height),
            "sar": v.sample_aspect_ratio,
            "rotation": first.rotation,
        }
    with av.open(str(path)) as c:  # afresh: a seek would lose the decoder's skip of the priming
        if c.streams.audio:
            a = c.streams.audio[0]
            video.info["audio"] = (a.codec_context.name, a.codec_context.channels)
            video.audio_start = None if a.start_time is None else a.start_time * a.time_base - origin
            video.audio_declared = None if not a.duration else a.duration * a.time_base
            end = None
            for frame in c.decode(a):
                t = frame.pts * frame.time_base - origin
                if video.audio_onset is None:
                    loud = np.flatnonzero(np.abs(frame.to_ndarray()[0]) > 0.02)
                    if loud.size:
                        video.audio_onset = t + Fraction(int(loud[0]), frame.sample_rate)
                end = t + Fraction(frame.samples, frame.sample_rate)
            video.audio_end = end
        else:
            video.info["audio"] = None
    return video


def luma(frame) -> np.ndarray:
    """The Y plane of a planar YUV frame, without the line padding."""
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width].copy()


def scaled(y: np.ndarray, width: int, height: int) -> np.ndarray:
    """A source luma scaled to a rung's size: the reference a rendition frame must match."""
    frame = av.VideoFrame.from_ndarray(y, format="gray")
    return frame.reformat(width=width, height=height, format="gray", interpolation=Interpolation.BILINEAR).to_ndarray()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def marker_corner(luma: np.ndarray) -> str:
    """Which corner holds the clips' white square (it is top-left in the stored frame)."""
    h, w = luma.shape
    corners = {
        "top-left": luma[: h // 8, : w // 8],
        "top-right": luma[: h // 8, -(w // 8) :],
        "bottom-left": luma[-(h // 8) :, : w // 8],
        "bottom-right": luma[-(h // 8) :, -(w // 8) :],
    }
    return max(corners, key=lambda k: corners[k].mean())


def segment_starts(times: list[Fraction], segment_s: float) -> dict[int, Fraction]:
    """segment index -> its first frame, where every rung must have an IDR frame (a segment
    without any frame, in a still stretch of a VFR video, has none)."""
    grid = Fraction(segment_s)
    starts: dict[int, Fraction] = {}
    for t in times:
        starts.setdefault(max(0, math.floor(t / grid)), t)
    return starts


def irregular(times: list[Fraction]) -> bool:
    """Frames not evenly spaced: VFR, or CFR rounded to Matroska's milliseconds."""
    steps = {b - a for a, b in zip(times, times[1:])}
    return len(steps) > 1


def timescale(init: bytes) -> int:
    """The media timescale of the (single) track of an init segment: moov/trak/mdia/mdhd."""
    found = _find(init, ["moov", "trak", "mdia", "mdhd"])
    assert found is not None, "no mdhd in the init segment"
    pos, _ = found
    version = init[pos + 8]
    return struct.unpack_from(">I", init, pos + (28 if version == 1 else 20))[0]


def first_sample_offset(fragment: bytes) -> int:
    """The composition time offset of the first sample of a fragment (moof/traf/trun), 0 when
    the trun has none: its presentation time is tfdt plus this."""
    found = _find(fragment, ["moof", "traf", "trun"])
    assert found is not None, "no trun in the fragment"
    pos, _ = found
    version, flags = fragment[pos + 8], int.from_bytes(fragment[pos + 9 : pos + 12], "big")
    if not flags & 0x800:
        return 0
    at = pos + 16 + 4 * bool(flags & 0x1) + 4 * bool(flags & 0x4)  # data offset, first sample flags
    at += 4 * (bool(flags & 0x100) + bool(flags & 0x200) + bool(flags & 0x400))  # duration, size, flags
    return struct.unpack_from(">i" if version else ">I", fragment, at)[0]


def fragment_duration(fragment: bytes) -> int:
    """The sum of the sample durations of a fragment (tfhd defaults, trun entries): with its
    tfdt, where the fragment ends on the decode timeline."""
    tfhd, _ = _find(fragment, ["moof", "traf", "tfhd"])
    flags = int.from_bytes(fragment[tfhd + 9 : tfhd + 12], "big")
    default = 0
    if flags & 0x8:
        at = tfhd + 16 + 8 * bool(flags & 0x1) + 4 * bool(flags & 0x2)
        default = struct.unpack_from(">I", fragment, at)[0]
    trun, _ = _find(fragment, ["moof", "traf", "trun"])
    flags = int.from_bytes(fragment[trun + 9 : trun + 12], "big")
    (count,) = struct.unpack_from(">I", fragment, trun + 12)
    if not flags & 0x100:
        return default * count
    at = trun + 16 + 4 * bool(flags & 0x1) + 4 * bool(flags & 0x4)
    entry = 4 * sum(bool(flags & f) for f in (0x100, 0x200, 0x400, 0x800))
    return sum(struct.unpack_from(">I", fragment, at + n * entry)[0] for n in range(count))


def _find(data: bytes, path: list[str], start: int = 0, end: int | None = None):
    for kind, pos, size in cmaf.boxes(data, start, end):
        if kind == path[0]:
            return (pos, size) if len(path) == 1 else _find(data, path[1:], pos + 8, pos + size)
    return None


# --- the clips ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    make: object  # (work dir) -> source path
    chunk_s: float
    chunks: int  # planned
    sizes: list  # of the rungs
    corner: str  # where the marker shows
    # ultrafast (no B-frames) keeps the suite fast; the product's preset where reordering
    # matters (signed composition offsets, the stitch's shift back)
    preset: str = "ultrafast"


# Sources with keyframes every 20 frames (2/3 s), off the 1 s grid: most chunks start
# between two keyframes, so a chunk decodes from the one before and drops what is not its.
CLIPS = {
    "landscape 640x480 b-frames, 2 rungs, veryfast": Case(
        lambda p: make_clip(p / "src.mp4", width=640, height=480, seconds=3.4, gop=20, bframes=2),
        1.0,
        3,
        [(640, 480), (480, 360)],
        "top-left",
        preset="veryfast",
    ),
    "portrait (rotation 90)": Case(
        lambda p: make_clip(p / "src.mp4", seconds=2.5, rotation=90, gop=20), 1.0, 2, [(240, 320)], "top-right"
    ),
    "portrait (rotation 270), 2 rungs": Case(
        lambda p: make_clip(p / "src.mp4", width=640, height=480, seconds=2.5, rotation=270, gop=20, audio=False),
        1.0,
        2,
        [(480, 640), (360, 480)],
        "bottom-left",
    ),
    "anamorphic (SAR 4:3)": Case(
        lambda p: make_clip(p / "src.mp4", seconds=2.5, sar=(4, 3), gop=20), 1.0, 2, [(426, 240)], "top-left"
    ),
    "29.97 fps b-frames in mkv (audio priming as a negative start)": Case(
        lambda p: make_clip(p / "src.mkv", fps=Fraction(30000, 1001), seconds=3.3, gop=20, bframes=2),
        1.0,
        3,
        [(320, 240)],
        "top-left",
    ),
    "vfr mp4": Case(lambda p: make_vfr_clip(p / "src.mp4", seconds=3.3), 1.0, 3, [(320, 240)], "top-left"),
    "vfr mp4, veryfast": Case(
        lambda p: make_vfr_clip(p / "src.mp4", seconds=3.3), 1.0, 3, [(320, 240)], "top-left", preset="veryfast"
    ),
    "vfr mkv (1 ms timestamps)": Case(
        lambda p: make_vfr_clip(p / "src.mkv", seconds=3.3, keyframe_s=0.7), 1.0, 3, [(320, 240)], "top-left"
    ),
    "vfr with a still stretch longer than a chunk": Case(
        # 1 s of frames, none for 2.5 s (a screen recording of a still screen), 1 s again
        lambda p: make_vfr_clip(p / "src.mp4", seconds=4.5, intervals_ms=(33,) * 30 + (2500,) + (33,) * 29),
        1.0,
        5,
        [(320, 240)],
        "top-left",
    ),
    "no audio": Case(
        lambda p: make_clip(p / "src.mp4", seconds=2.5, audio=False, gop=20), 1.0, 2, [(320, 240)], "top-left"
    ),
    "odd size 333x199 (mpeg4 in mkv)": Case(
        lambda p: make_clip(p / "src.mkv", width=333, height=199, seconds=2.6, codec="mpeg4", gop=20),
        1.0,
        3,
        [(332, 198)],
        "top-left",
    ),
    "single frame": Case(lambda p: make_clip(p / "src.mp4", seconds=1 / 30), 1.0, 1, [(320, 240)], "top-left"),
    "5.3 s in 2 s chunks, veryfast": Case(
        lambda p: make_clip(p / "src.mp4", seconds=5.3, gop=20), 2.0, 3, [(320, 240)], "top-left", preset="veryfast"
    ),
    "mpeg-ts (no index: one chunk)": Case(
        lambda p: make_clip(p / "src.ts", seconds=2.5, container="mpegts", gop=20), 1.0, 1, [(320, 240)], "top-left"
    ),
    "webm vp9 (one keyframe: one chunk)": Case(
        lambda p: make_clip(p / "src.webm", seconds=2.5, codec="libvpx-vp9", audio=False),
        1.0,
        1,
        [(320, 240)],
        "top-left",
    ),
}

_runs: dict[str, tuple[Run, Video, dict[str, Video]]] = {}


@pytest.fixture
def clip_run(request, tmp_path_factory):
    """The pipeline run of one clip, shared by the tests of that clip (each test checks one
    property, the encode happens once)."""
    name = request.param
    if name not in _runs:
        case = CLIPS[name]
        work = tmp_path_factory.mktemp("chunks")
        run = run_pipeline(case.make(work), work / "out", chunk_s=case.chunk_s, preset=case.preset)
        source = decode(run.src, rotation=run.info.rotation)
        outputs = {rung: decode(path) for rung, path in run.outputs.items()}
        _runs[name] = (run, source, outputs)
    return (name, *_runs[name])


def clips(*names):
    return pytest.mark.parametrize("clip_run", names or list(CLIPS), indirect=True)


# --- the stitched renditions ---------------------------------------------------------------------


@clips()
def test_plan_and_renditions_are_upright_square_pixel_h264(clip_run):
    name, run, source, outputs = clip_run
    case = CLIPS[name]
    assert len(run.plan.chunks) == case.chunks
    assert run.info.cuttable == (case.chunks > 1)
    assert [(r.width, r.height) for r in run.plan.renditions] == case.sizes
    for rung, out in outputs.items():
        spec = next(r for r in run.plan.renditions if r.name == rung)
        assert out.info["codec"] == "h264" and out.info["pix_fmt"] == "yuv420p"
        assert out.info["size"] == (spec.width, spec.height)
        assert out.info["rotation"] == 0  # upright pixels, no display matrix
        assert out.info["sar"] in (None, 0, 1)
        assert marker_corner(out.lumas[0]) == case.corner
        assert out.info["audio"] == (("aac", 2) if run.plan.audio else None)
        stitched = run.stitched[rung]
        assert (stitched.width, stitched.height, stitched.has_audio) == (spec.width, spec.height, run.plan.audio)
        assert stitched.frames == len(source.times)
        assert stitched.size == run.outputs[rung].stat().st_size


@clips()
def test_every_source_frame_once_at_its_own_time(clip_run):
    _, run, source, outputs = clip_run
    assert sum(c.result.frames for c in run.chunks) == len(source.times)
    for rung, out in outputs.items():
        assert len(out.times) == len(source.times), rung
        # timestamps carried over exactly (VFR stays VFR); the output timescale may be finer
        worst = max(abs(a - b) for a, b in zip(out.times, source.times))
        assert worst < Fraction(1, 1000), f"{rung}: a frame moved by {float(worst) * 1000:.2f} ms"
        assert abs(out.end - source.end) <= source.frame
        assert out.duration is not None and abs(out.duration - (source.end - source.times[0])) <= source.frame


@clips()
def test_chunks_meet_without_gap_or_overlap(clip_run):
    _, run, source, _ = clip_run
    grid = Fraction(run.plan.segment_s)
    starts = segment_starts(source.times, run.plan.segment_s)
    segments = [s for c in run.chunks for s in c.result.segments]
    # every segment that has a frame, once, in order, from the chunk that owns its start
    assert [s.index for s in segments] == sorted(starts)
    assert max(starts) == run.plan.segments - 1
    for c in run.chunks:
        mine = [
            t
            for t in source.times
            if (c.span.index == 0 or t >= c.span.start) and (c.span.end is None or t < c.span.end)
        ]
        assert c.result.frames == len(mine)
        assert [s.index for s in c.result.segments] == [i for i in sorted(starts) if starts[i] in mine]
    assert [s.start for s in segments] == pytest.approx([float(starts[i]) for i in sorted(starts)], abs=float(EXACT))
    for s, nxt in zip(segments, segments[1:]):
        # each segment lasts until the next begins, across chunks too (no gap, no overlap)
        assert s.start + s.duration == pytest.approx(nxt.start, abs=1e-6)
        if nxt.index == s.index + 1:
            # an honest EXT-X-TARGETDURATION: no segment longer than the grid and a frame
            assert s.duration <= float(grid + source.frame) + 1e-6
    assert segments[-1].start + segments[-1].duration == pytest.approx(float(source.end), abs=float(source.frame))
    filled = [c for c in run.chunks if c.result.segments]
    for a, b in zip(filled, filled[1:]):
        assert a.result.end == pytest.approx(b.result.segments[0].start, abs=1e-6)


@clips()
def test_frames_each_side_of_every_boundary_match_the_source(clip_run):
    name, run, source, outputs = clip_run
    boundaries = [Fraction(c.span.start) for c in run.chunks[1:]]
    grid = Fraction(run.plan.segment_s)
    boundaries += [k * grid for k in range(1, run.plan.segments) if k * grid not in boundaries]
    sides = set()
    for b in boundaries:
        after = next(i for i, t in enumerate(source.times) if t >= b)
        sides |= {after - 1, after}
    sides.add(0)
    sides.add(len(source.times) - 1)
    for rung, out in outputs.items():
        spec = next(r for r in run.plan.renditions if r.name == rung)
        refs = [scaled(y, spec.width, spec.height) for y in source.lumas]
        for i in sorted(sides):
            got = psnr(out.lumas[i], refs[i])
            assert got >= MIN_PSNR_DB, f"{rung} frame {i} at {float(source.times[i]):.3f} s: {got:.1f} dB"
            # and it is this frame, not a neighbour repeated or skipped
            for j in (i - 1, i + 1):
                if 0 <= j < len(refs):
                    assert got > psnr(out.lumas[i], refs[j]) + 3, f"{rung} frame {i} looks like frame {j}"
        every = [psnr(a, b) for a, b in zip(out.lumas, refs)]
        assert min(every) >= MIN_PSNR_DB, f"{rung}: frame {int(np.argmin(every))} at {min(every):.1f} dB"


@clips()
def test_every_rung_has_its_keyframes_on_the_segment_grid(clip_run):
    _, run, source, outputs = clip_run
    expected = sorted(segment_starts(source.times, run.plan.segment_s).values())
    for rung, path in run.outputs.items():
        # the container's sync samples (what a player seeks and switches by) and the decoder's
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            origin = Fraction(c.start_time or 0, av.time_base)
            synced = sorted(p.pts * p.time_base - origin for p in c.demux(v) if p.is_keyframe and p.pts is not None)
        assert [float(t) for t in synced] == pytest.approx([float(t) for t in expected], abs=1e-3), rung
        assert [float(t) for t in outputs[rung].keys] == pytest.approx([float(t) for t in expected], abs=1e-3), rung


@clips()
def test_audio_starts_with_the_video_and_lasts_as_long_as_the_source(clip_run):
    _, run, source, outputs = clip_run
    if not run.plan.audio:
        assert run.audio is None
        assert all(out.audio_end is None for out in outputs.values())
        return
    for rung, out in outputs.items():
        assert abs(out.start - out.audio_start) <= source.frame, rung
        # what is heard: the tone begins where it begins in the source (the encoder's priming
        # is not played), to a millisecond
        assert abs(out.audio_onset - source.audio_onset) <= Fraction(1, 1000), (
            f"{rung}: sound at {float(out.audio_onset) * 1000:.1f} ms, {float(source.audio_onset) * 1000:.1f} ms in the source"
        )
        # and the offset the source had (zero for a camera file) is kept
        assert abs((out.start - out.audio_start) - (source.start - source.audio_start)) <= Fraction(1, 1000)
        assert abs(out.audio_end - source.audio_end) <= AAC_FRAME_S + source.frame, rung
        if out.audio_declared is not None:
            assert abs(out.audio_declared - (source.audio_end - source.audio_start)) <= AAC_FRAME_S + source.frame
    assert run.audio.end == pytest.approx(float(source.audio_end), abs=AAC_FRAME_S + float(source.frame))


# --- the fragments ----------------------------------------------------------------------------


@clips()
def test_fragments_meet_on_the_decode_timeline(clip_run):
    """Each fragment's samples last until the next fragment's tfdt (a player buffering the
    HLS stream sees no hole and no overlap), and the last one until the video ends; a frame
    before a still stretch lasts the whole stretch."""
    _, run, source, _ = clip_run
    reordered_vfr = run.preset != "ultrafast" and irregular(source.times)
    for rung in run.plan.renditions:
        scale = timescale(Path(chunk_mod.init_path(str(run.chunks[0].dir), rung.name)).read_bytes())
        # x264 derives decode times from earlier frames' timestamps: with B-frames on a VFR
        # source they stray from the presentation times by less than a frame
        slack = source.frame if reordered_vfr else Fraction(1, scale)
        spans = []
        for c in run.chunks:
            for s in c.result.segments:
                data = Path(chunk_mod.segment_path(str(c.dir), rung.name, s.index)).read_bytes()
                spans.append((s.index, cmaf.first_fragment_tfdt(data), fragment_duration(data)))
        for (index, tfdt, duration), (_, nxt, _) in zip(spans, spans[1:]):
            hole = Fraction(nxt - tfdt - duration, scale)
            assert abs(hole) <= slack, f"{rung.name}: {float(hole) * 1000:+.1f} ms after segment {index}"
        _, tfdt, duration = spans[-1]
        assert abs(Fraction(tfdt + duration, scale) - source.end) <= slack, rung.name


@clips()
def test_each_rung_has_one_init_segment_whatever_chunk_wrote_it(clip_run):
    _, run, _, _ = clip_run
    filled = [c for c in run.chunks if c.result.segments]  # a chunk in a still stretch has none
    for c in run.chunks:
        if not c.result.segments:
            assert c.result.inits == {} and not list(c.dir.rglob("*.m4s"))
    for rung in run.plan.renditions:
        inits = [Path(chunk_mod.init_path(str(c.dir), rung.name)).read_bytes() for c in filled]
        assert all(i == inits[0] for i in inits[1:]), f"{rung.name}: the chunks wrote different init segments"
        for c, init in zip(filled, inits):
            assert c.result.inits[rung.name] == hashlib.sha256(init).hexdigest()
        kinds = [k for k, _, _ in cmaf.boxes(inits[0])]
        assert kinds[:2] == ["ftyp", "moov"] and "moof" not in kinds and "mdat" not in kinds


@clips()
def test_fragments_start_with_a_moof_whose_tfdt_is_the_segment_start(clip_run):
    _, run, source, _ = clip_run
    starts = segment_starts(source.times, run.plan.segment_s)
    reordered_vfr = run.preset != "ultrafast" and irregular(source.times)
    for rung in run.plan.renditions:
        scale = timescale(Path(chunk_mod.init_path(str(run.chunks[0].dir), rung.name)).read_bytes())
        for c in run.chunks:
            for s in c.result.segments:
                data = Path(chunk_mod.segment_path(str(c.dir), rung.name, s.index)).read_bytes()
                assert [k for k, _, _ in cmaf.boxes(data)] == ["moof", "mdat"], f"{rung.name} segment {s.index}"
                assert s.sizes[rung.name] == len(data)
                tfdt = cmaf.first_fragment_tfdt(data)
                # the IDR opening the fragment is presented at the segment's start, on the
                # source timeline (not from 0 in each chunk)
                shown = Fraction(tfdt + first_sample_offset(data), scale)
                assert abs(shown - starts[s.index]) <= EXACT, (
                    f"{rung.name} segment {s.index}: shown at {float(shown):.4f} s, starts at {float(starts[s.index]):.4f} s"
                )
                # and decoded then: tfdt is the segment start, always where chunks meet (that
                # is what lets chunks encoded apart concatenate); inside a chunk x264 derives
                # decode times from earlier frames' timestamps, which on a VFR source with
                # B-frames may put an IDR's decode time a little (under a frame) before its
                # presentation
                if s is c.result.segments[0] or not reordered_vfr:
                    assert abs(Fraction(tfdt, scale) - starts[s.index]) <= EXACT, (
                        f"{rung.name} segment {s.index}: tfdt {tfdt}/{scale} for a start at {float(starts[s.index]):.4f} s"
                    )
                else:
                    assert starts[s.index] - source.frame < Fraction(tfdt, scale) <= starts[s.index]
        for codec in run.chunks[0].result.codecs.values():
            assert re.fullmatch(r"avc1\.(42|4d|64)[0-9a-f]{2}1f", codec), codec  # level 3.1: these rungs
    if run.audio is not None:
        grid = Fraction(run.plan.segment_s)
        assert [s.index for s in run.audio.segments] == list(range(len(run.audio.segments)))
        assert run.audio.priming == 1024
        for s in run.audio.segments:
            data = Path(audio_mod.segment_path(str(run.audio_dir), s.index)).read_bytes()
            assert [k for k, _, _ in cmaf.boxes(data)][:1] == ["moof"]
            # the AAC frames that start in the segment: the first one within a frame of its start
            at = Fraction(cmaf.first_fragment_tfdt(data) - run.audio.priming, 48000)
            if s.index == 0:
                assert abs(at - (source.audio_start - Fraction(run.audio.priming, 48000))) <= EXACT
            else:
                assert s.index * grid <= at < s.index * grid + Fraction(1024, 48000)


def test_codec_strings_name_the_profile_and_level_of_each_rung(tmp_path):
    """The HLS CODECS attribute comes from each rung's avcC: profile from the ladder (high
    for 720p, main below), level from the ladder; at the product's preset."""
    src = make_clip(tmp_path / "hd.mp4", width=1280, height=720, seconds=0.4, audio=False)
    result = encode_chunk(
        src, str(tmp_path / "out"), rungs=plan_ladder(1280, 720), segment_s=SEGMENT_S, preset="veryfast"
    )
    assert result.codecs == {"720p": "avc1.640020", "480p": "avc1.4d401f", "360p": "avc1.4d401f"}


# --- the colour and the picture -----------------------------------------------------------------


@pytest.mark.parametrize(
    "codec,name",
    [("libx264", "src.mp4"), ("libvpx-vp9", "src.webm")],  # decoded as yuvj420p; as yuv420p flagged full range
)
def test_full_range_source_is_converted_to_studio_range(tmp_path, codec, name):
    src = make_clip(tmp_path / name, seconds=2.2, gop=20, full_range=True, audio=False, codec=codec)
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    assert len(run.chunks) == 2
    (rung,) = run.plan.renditions
    out = decode(run.outputs[rung.name])
    with av.open(str(run.outputs[rung.name])) as c:
        assert c.streams.video[0].codec_context.color_range in (ColorRange.UNSPECIFIED, ColorRange.MPEG)
    source = decode(src)  # converted to studio range as a player would
    with av.open(src) as c:
        raw = [luma(f) for f in c.decode(video=0)]  # the stored values
    right = [psnr(a, scaled(b, rung.width, rung.height)) for a, b in zip(out.lumas, source.lumas)]
    wrong = [psnr(a, scaled(b, rung.width, rung.height)) for a, b in zip(out.lumas, raw)]
    assert min(right) >= MIN_PSNR_DB
    assert min(right) > max(wrong) + 3  # the conversion is what makes it match
    # the white marker: 235 of 255 in full range is 16 + 235 * 219 / 255 = 218 in studio range
    assert out.lumas[0][:20, :20].mean() == pytest.approx(218, abs=3)


@pytest.mark.parametrize("rotation,corner", [(90, "top-right"), (180, "bottom-right"), (270, "bottom-left")])
def test_rotated_sources_come_out_upright(tmp_path, rotation, corner):
    src = make_clip(tmp_path / "src.mp4", seconds=1.8, rotation=rotation, gop=10, audio=False)
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    assert len(run.chunks) == 2
    (rung,) = run.plan.renditions
    assert (rung.width, rung.height) == ((240, 320) if rotation % 180 else (320, 240))
    out = decode(run.outputs[rung.name])
    assert out.info["rotation"] == 0
    assert [marker_corner(y) for y in (out.lumas[0], out.lumas[-1])] == [corner, corner]


# --- bad media and bad calls --------------------------------------------------------------------


def _truncated(path: Path, *, keep: float) -> str:
    """A faststart MP4 with keyframes (so it plans as several chunks) cut after `keep` of it."""
    make_clip(path, seconds=4.0, faststart=True, container="mp4", gop=20)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    return str(path)


def _decodable_until(path: str) -> Fraction:
    """Where the frames that can still be decoded end (the clips are 30 frames/s)."""
    end = Fraction(0)
    with av.open(path) as c:
        try:
            for frame in c.decode(video=0):
                end = frame.pts * frame.time_base + Fraction(1, 30)
        except av.error.FFmpegError:
            pass
    return end


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_a_truncated_source_gives_what_is_there_and_says_how_much_is_missing(tmp_path, keep):
    """A faststart MP4 cut short: every chunk before the cut is whole, the chunk that holds
    the cut ends with the last frame there is and a `truncated` warning, chunks past it are
    empty (without a second warning); the audio likewise; the stitch plays what is there."""
    src = _truncated(tmp_path / "cut.mp4", keep=keep)
    info = probe(src)
    # the trap: the index is intact, so the file looks like a healthy 4 s video
    assert info.duration == pytest.approx(4.0, abs=0.1) and info.cuttable
    cut = _decodable_until(src)
    assert 0.5 < cut < 3.5
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    assert len(run.chunks) == 4
    for c in run.chunks:
        result = c.result
        if c.span.end is not None and c.span.end <= cut - 0.1:
            assert (result.frames, result.warnings) == (30, []), f"chunk {c.span.index} before the cut"
        elif c.span.start >= cut:
            assert (result.frames, result.segments, result.warnings) == (0, [], []), (
                f"chunk {c.span.index} past the cut"
            )
        else:
            (warning,) = result.warnings
            assert warning.code == "truncated"
            assert re.fullmatch(
                r"the video ends at [\d.]+ s of the 4\.0\d s its file declares \([\d.]+ s missing\)", warning.message
            )
            assert result.end == pytest.approx(float(cut), abs=1 / 30)
    assert sum(c.result.frames for c in run.chunks) == round(cut * 30)
    assert [w.code for w in run.audio.warnings] == ["truncated"]
    assert run.audio.warnings[0].message.startswith("the audio ends at ")
    for rung, stitched in run.stitched.items():
        assert stitched.frames == round(cut * 30), rung
        assert stitched.duration == pytest.approx(float(cut), abs=0.05), rung


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_a_truncated_source_of_one_chunk_gives_what_is_there(tmp_path, keep):
    src = make_truncated(tmp_path / "cut.mp4", seconds=3.0, keep=keep)  # one keyframe: not cuttable
    info = probe(src)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    plan = plan_video(info, chunk_s=1.0, segment_s=SEGMENT_S)
    assert len(plan.chunks) == 1
    cut = _decodable_until(src)
    result = encode_chunk(src, str(tmp_path / "out"), rungs=plan.renditions, segment_s=SEGMENT_S, preset="ultrafast")
    assert result.frames == round(cut * 30)
    assert [w.code for w in result.warnings] == ["truncated"]
    assert len(result.segments) == math.ceil(cut - 1e-6)


def test_garbage_and_pictureless_input_is_bad_media(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(2).randbytes(5000))
    rungs = plan_ladder(320, 240)
    for src in (str(junk), make_audio_only(tmp_path / "song.m4a")):
        with pytest.raises(MediaError) as e:
            encode_chunk(src, str(tmp_path / "out"), rungs=rungs, segment_s=SEGMENT_S, preset="ultrafast")
        assert e.value.code == "bad_media"
    with pytest.raises(MediaError) as e:
        encode_audio(str(junk), str(tmp_path / "audio"), segment_s=SEGMENT_S)
    assert e.value.code == "bad_media"
    # no audio is not an error: an empty track
    silent = make_clip(tmp_path / "silent.mp4", seconds=0.3, audio=False)
    assert encode_audio(silent, str(tmp_path / "audio2"), segment_s=SEGMENT_S).segments == []


def test_stitch_refuses_what_is_not_cmaf_and_leaves_nothing(tmp_path):
    plain = make_clip(tmp_path / "plain.mp4", seconds=0.3, audio=False)  # a regular MP4
    dst = tmp_path / "out.mp4"
    with pytest.raises(MediaError) as e:
        stitch(plain, str(dst))
    assert e.value.code == "encode_failed"
    assert not dst.exists()


def test_bad_calls_are_value_errors(tmp_path):
    src = make_clip(tmp_path / "src.mp4", seconds=0.3, audio=False)
    (rung,) = plan_ladder(320, 240)
    odd = msgspec.structs.replace(rung, width=321)
    with pytest.raises(ValueError):
        encode_chunk(src, str(tmp_path / "o"), rungs=[odd], segment_s=SEGMENT_S, preset="ultrafast")
    with pytest.raises(ValueError):
        encode_chunk(src, str(tmp_path / "o"), rungs=[rung], segment_s=SEGMENT_S, rotation=45, preset="ultrafast")
    with pytest.raises(ValueError):
        encode_chunk(
            src,
            str(tmp_path / "o"),
            rungs=[rung],
            segment_s=SEGMENT_S,
            first_segment=2,
            end_segment=2,
            preset="ultrafast",
        )
    with pytest.raises(ValueError):
        plan_video(probe(src), chunk_s=1.5, segment_s=SEGMENT_S)


# --- progress and cancellation --------------------------------------------------------------------


def test_progress_counts_finished_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(chunk_mod, "PROGRESS_INTERVAL_S", 0.0)  # report as often as there is news
    src = make_clip(tmp_path / "src.mp4", seconds=3.0, audio=False, gop=15)
    seen = []
    result = encode_chunk(
        src,
        str(tmp_path / "out"),
        rungs=plan_ladder(320, 240),
        segment_s=SEGMENT_S,
        preset="ultrafast",
        on_progress=seen.append,
    )
    assert len(result.segments) == 3
    assert seen == [1, 2]  # the last segment is finished when the chunk returns


def test_should_stop_cancels_quickly(tmp_path):
    src = make_clip(tmp_path / "src.mp4", seconds=2.0, audio=False)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5

    started = time.monotonic()
    with pytest.raises(Cancelled):
        encode_chunk(
            src,
            str(tmp_path / "out"),
            rungs=plan_ladder(320, 240),
            segment_s=SEGMENT_S,
            should_stop=should_stop,
            preset="ultrafast",
        )
    assert time.monotonic() - started < 1.0
    assert len(calls) == 6
    assert not list((tmp_path / "out").rglob("*.m4s"))


def test_x264_threads_follow_the_cpus_the_transcoder_may_use():
    """x264 left to itself starts 1.5 frame threads per CPU it sees, whatever the container's
    CPU limit: the transcoder sets them from what it may use."""
    import subprocess
    import sys

    from services.transcoder.chunk import x264_options

    rung = plan_ladder(1280, 720)[0]
    assert x264_options(rung, "veryfast", threads=2)["threads"] == "2"
    assert "threads" not in x264_options(rung, "veryfast")  # 0: x264's own choice
    pinned = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
            "from services.transcoder.service import cpu_budget; print(cpu_budget())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.strip() == "1"


def test_chunks_after_the_first_run_on_lower_priority_threads_with_their_codec_threads():
    """A video's first chunk and its audio (what makes it playable) win the cores from the
    other chunks where transcoders share a machine; the codec threads a task starts inherit
    its thread's priority."""
    import os
    import threading

    from services.transcoder.service import BACKGROUND_NICE, _executor

    def nice_of_this_and_a_child_thread() -> tuple[int, int]:
        seen = []
        child = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        child.start()
        child.join()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), seen[0]

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _executor(urgent=True).submit(nice_of_this_and_a_child_thread).result() == (base, base)
    low = min(19, base + BACKGROUND_NICE)
    assert _executor(urgent=False).submit(nice_of_this_and_a_child_thread).result() == (low, low)

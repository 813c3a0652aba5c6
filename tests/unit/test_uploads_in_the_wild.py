"""Uploads as the web and real recorders make them, through the media path as the mesh runs
it (probe -> plan -> chunks -> audio -> stitch): animated images (GIF, APNG, animated
WebP) become silent videos with their own frame delays; a damaged packet is skipped, not
fatal; a recording cut short gives what is there with a `truncated` warning; a complete
file whose timeline starts late is measured from its first timestamp.
"""

from __future__ import annotations

import re
from fractions import Fraction

import av
import numpy as np
import pytest

from media.decoding import StreamDecoder
from media.problems import MediaError
from media.source import open_source
from services.pipeline.probe import probe
from tests.clips import make_clip
from tests.reference import ANIMATION_DELAYS_MS, animation, cut_short, damaged_avi, declare_duration, late_start_fmp4
from tests.unit.test_chunks import run_pipeline


def frame_times(path) -> tuple[list[float], float]:
    """(presentation times, where the last frame ends), in seconds from the container's start,
    as our own decoder sees the file."""
    with open_source(str(path)) as c:
        origin = Fraction(c.start_time or 0, av.time_base)
        stream = c.streams.video[0]
        decoded = StreamDecoder(stream).frames(c)  # a file cut short ends in half a packet
        frames = [(f.pts * f.time_base - origin, (f.duration or 0) * f.time_base) for f in decoded]
    return [float(t) for t, _ in frames], float(frames[-1][0] + frames[-1][1])


# --- animated images ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gif", "apng", "webp"])
def test_an_animated_image_becomes_a_silent_video_with_its_own_delays(tmp_path, kind):
    src = animation(tmp_path, kind)
    info = probe(src)
    assert info.container == kind and (info.width, info.height) == (64, 48) and info.audio_codec is None
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    (rung,) = run.plan.renditions
    times, end = frame_times(src)
    assert times == pytest.approx([0.0, 0.1, 0.6, 0.8], abs=1e-3)  # ANIMATION_DELAYS_MS
    out_times, out_end = frame_times(run.outputs[rung.name])
    assert out_times == pytest.approx(times, abs=1e-3), "each frame shown for its own delay"
    assert out_end == pytest.approx(end, abs=0.01)
    with av.open(str(run.outputs[rung.name])) as c:
        assert not c.streams.audio
        frame = next(c.decode(video=0)).reformat(format="yuv444p")
    y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes)
    left = [float(p[16:, :24].mean()) for p in (y, u, v)]  # transparent over green
    assert left == pytest.approx([16, 128, 128], abs=4), f"transparency flattened on black: {left}"
    assert float(v[16:, 40:].mean()) > 200, "the opaque half stays red"


@pytest.mark.parametrize("kind", ["gif", "apng", "webp"])
def test_a_still_image_is_still_not_a_video(tmp_path, kind):
    with pytest.raises(MediaError) as e:
        probe(animation(tmp_path, kind, frames=1))
    assert e.value.code == "not_media"
    # a one-frame APNG or WebP is a plain PNG or WebP (an image pipe); a GIF is a GIF
    assert "still image" in e.value.message if kind == "gif" else "_pipe" in e.value.message


def test_animation_delays_are_the_ones_written():
    assert ANIMATION_DELAYS_MS == (100, 500, 200, 1000)


# --- a damaged packet ----------------------------------------------------------------------------


def test_a_damaged_audio_packet_is_skipped_and_the_video_is_whole(tmp_path):
    """The issue's AVI: 6 s of MPEG-4 video and AC-3 audio, the last AC-3 frame scrambled.
    The ffmpeg CLI skips that frame and writes 6 s; so do we, and say so."""
    src = damaged_avi(tmp_path / "damaged.avi")
    info = probe(src)
    assert info.duration == pytest.approx(6.0, abs=0.05)
    run = run_pipeline(src, tmp_path / "out", chunk_s=2.0)
    assert sum(c.result.frames for c in run.chunks) == 150
    assert all(c.result.warnings == [] for c in run.chunks)
    (warning,) = run.audio.warnings
    assert (warning.code, warning.message) == ("damaged_packets", "1 undecodable audio packet was skipped")
    assert run.audio.end == pytest.approx(6.0, abs=0.05)
    for stitched in run.stitched.values():
        assert stitched.frames == 150 and stitched.has_audio
        assert stitched.duration == pytest.approx(6.0, abs=0.05)


def test_a_damaged_video_packet_is_skipped_and_counted(tmp_path):
    """An MPEG-4 Part 2 frame in AVI zeroed out (no start code left): the decoder refuses
    that packet; the frames before and after it are encoded."""
    src = make_clip(tmp_path / "clip.avi", seconds=2.0, codec="mpeg4", audio=False, gop=10)
    data = bytearray(open(src, "rb").read())
    chunks = [m.start() for m in re.finditer(rb"00dc", data[: data.rfind(b"idx1")])]
    victim = chunks[len(chunks) // 2 + 3]  # a P frame in the middle
    size = int.from_bytes(data[victim + 4 : victim + 8], "little")
    data[victim + 8 : victim + 8 + size] = bytes(size)
    open(src, "wb").write(data)
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    assert sum(c.result.frames for c in run.chunks) == 59
    warnings = [w for c in run.chunks for w in c.result.warnings]
    assert [(w.code, w.message) for w in warnings] == [("damaged_packets", "1 undecodable video packet was skipped")]


# --- media that ends early, and timelines that start late -----------------------------------------


@pytest.mark.parametrize("container", ["mkv", "flv"])
def test_a_recording_cut_short_gives_what_is_there_and_says_how_much_is_missing(tmp_path, container):
    """The header declares 720 s; 3 s were recorded and the end of the file is missing (no
    Matroska Cues). Not cuttable, so one chunk decodes what is there."""
    src = make_clip(tmp_path / f"rec.{container}", seconds=3.0, gop=15)
    declare_duration(src, 720.0)
    cut_short(src, 0.9)
    info = probe(src)
    assert info.duration == pytest.approx(720.0) and not info.cuttable
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    (chunk,) = run.chunks
    there, end = frame_times(src)
    assert chunk.result.frames == len(there) and 60 < len(there) < 90
    (warning,) = chunk.result.warnings
    assert warning.code == "truncated"
    m = re.fullmatch(
        r"the video ends at ([\d.]+) s of the 720\.00 s its file declares \(([\d.]+) s missing\)", warning.message
    )
    assert m and float(m[1]) == pytest.approx(end, abs=0.05) and float(m[2]) == pytest.approx(720 - end, abs=0.05)
    assert [w.code for w in run.audio.warnings] == ["truncated"]
    for stitched in run.stitched.values():
        assert stitched.frames == len(there)
        assert stitched.duration == pytest.approx(end, abs=0.1)


def test_a_fragmented_mp4_whose_timeline_starts_late_is_measured_from_its_first_frame(tmp_path):
    """The init segment and the last fragment of an fMP4 HLS rendition of a 72 s clip: 6 s
    of media starting at 66 s. A complete 6 s video, no warning."""
    src = late_start_fmp4(tmp_path)
    info = probe(src)
    assert info.duration == pytest.approx(6.0, abs=0.05) and info.video_duration == pytest.approx(6.0, abs=0.05)
    run = run_pipeline(src, tmp_path / "out", chunk_s=2.0)
    assert len(run.plan.chunks) == 3
    assert sum(c.result.frames for c in run.chunks) == 180
    assert all(c.result.warnings == [] for c in run.chunks)
    for stitched in run.stitched.values():
        assert stitched.frames == 180 and stitched.duration == pytest.approx(6.0, abs=0.05)


def test_a_keyframe_index_far_short_of_the_declared_duration_is_not_cut_into_chunks(tmp_path):
    """A whole 3 s Matroska file (Cues included) whose header declares 720 s: cut into
    1 s chunks, 717 tasks would find nothing. One chunk decodes what is there and warns."""
    src = make_clip(tmp_path / "rec.mkv", seconds=3.0, gop=15)
    declare_duration(src, 720.0)
    info = probe(src)
    assert info.duration == pytest.approx(720.0) and not info.cuttable
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    (chunk,) = run.chunks
    assert chunk.result.frames == 90
    assert [w.code for w in chunk.result.warnings] == ["truncated"]
    assert chunk.result.warnings[0].message.startswith("the video ends at 3.00 s of the 720.00 s")

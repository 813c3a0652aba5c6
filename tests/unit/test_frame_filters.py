"""The frame path on what phones, camcorders and editors really record: HDR (HLG and PQ),
interlaced video (both field orders), transparency (VP9 alpha, ProRes 4444, QuickTime
Animation, PNG in MOV), SD and HD colour; each through the media path as the mesh runs it
(probe -> plan -> chunks -> audio -> stitch) and the thumbnail, checked against Debian's
ffmpeg as a reference (tests/reference.py).

Clips are small (a few frames, 320x240 to 640x360) so the file runs in well under a minute.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from media.frames import FramePath, RungScaler
from media.source import open_source, video_stream
from services.thumbnailer.snapshot import first_frame_jpeg
from tests.clips import make_clip
from tests.reference import (
    ALPHA_CODECS,
    TONEMAP_REFERENCE,
    TONEMAP_REFERENCE_JFIF,
    alpha_clip,
    hdr_clip,
    idet,
    interlaced_clip,
    raw_frame,
)
from tests.unit.test_chunks import psnr, run_pipeline

# Luma PSNR of an 8-bit H.264 rendition (CRF 23) against the reference conversion of the
# same frame: measured 47.7 dB (HLG) and 41.7 dB (PQ) here, the thumbnails alike; showing
# the HDR signal as if it were BT.709, as before, gives 19-22 dB.
MIN_TONEMAP_PSNR_DB = 34.0


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """The planes of an 8-bit planar frame, without line padding."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]


def raw_planes(data: bytes, width: int, height: int) -> list[np.ndarray]:
    """yuv420p bytes -> Y, U, V."""
    y = np.frombuffer(data, np.uint8, width * height).reshape(height, width)
    u = np.frombuffer(data, np.uint8, width * height // 4, width * height).reshape(height // 2, width // 2)
    v = np.frombuffer(data, np.uint8, width * height // 4, width * height * 5 // 4).reshape(height // 2, width // 2)
    return [y, u, v]


def first_rendition_frame(run) -> tuple[av.VideoFrame, object]:
    (rung,) = run.plan.renditions
    with av.open(str(run.outputs[rung.name])) as c:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        tags = (int(ctx.color_primaries), int(ctx.color_trc), int(ctx.colorspace), int(ctx.color_range))
        frame = next(c.decode(stream))
        return frame, (ctx.name, ctx.pix_fmt, ctx.profile, tags)


# --- HDR ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["hlg", "pq"])
def hdr(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"hdr-{request.param}")
    src = hdr_clip(work / f"{request.param}.mp4", request.param)
    run = run_pipeline(src, work / "out", chunk_s=1.0)
    reference = raw_planes(raw_frame(src, TONEMAP_REFERENCE), 640, 360)
    retagged = raw_planes(raw_frame(src, "null"), 640, 360)  # the HDR values as if BT.709
    return request.param, src, run, reference, retagged, work


def test_hdr_becomes_8bit_h264_tagged_bt709(hdr):
    _, _, run, _, _, _ = hdr
    frame, (codec, pix_fmt, profile, tags) = first_rendition_frame(run)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert "10" not in (profile or ""), f"never High 10: {profile}"
    assert tags == (1, 1, 1, 1), "BT.709 primaries, transfer and matrix, limited range"
    assert (frame.width, frame.height) == (640, 360)


def test_hdr_is_tone_mapped_close_to_the_zscale_reference(hdr):
    kind, _, run, reference, retagged, _ = hdr
    frame, _ = first_rendition_frame(run)
    ours = planes(frame)
    got = [psnr(a, b) for a, b in zip(ours, reference)]
    wrong = psnr(retagged[0], reference[0])
    print(
        f"\n{kind}: luma PSNR {got[0]:.1f} dB, chroma {got[1]:.1f}/{got[2]:.1f} dB vs zscale+tonemap; re-tag only {wrong:.1f} dB"
    )
    assert got[0] >= MIN_TONEMAP_PSNR_DB, f"{kind}: {got[0]:.1f} dB"
    assert min(got[1:]) >= 30.0, f"{kind}: chroma {got[1]:.1f}/{got[2]:.1f} dB"
    assert wrong < MIN_TONEMAP_PSNR_DB - 10, "a re-tag without conversion would pass this test"


def test_hdr_thumbnail_is_tone_mapped_too(hdr):
    """The JPEG's luma (JFIF: BT.601, full range) against the reference made for JFIF."""
    kind, src, _, _, _, work = hdr
    assert first_frame_jpeg(src, str(work / "t.jpg")) == (640, 360)
    with av.open(str(work / "t.jpg")) as c:
        ours = planes(next(c.decode(video=0)))[0]
    reference = np.frombuffer(raw_frame(src, TONEMAP_REFERENCE_JFIF, "yuvj420p"), np.uint8, 640 * 360).reshape(360, 640)
    retagged = np.frombuffer(raw_frame(src, "scale=out_range=pc", "yuvj420p"), np.uint8, 640 * 360).reshape(360, 640)
    got, wrong = psnr(ours, reference), psnr(retagged, reference)
    print(f"\n{kind} thumbnail: luma PSNR {got:.1f} dB vs zscale+tonemap; re-tag only {wrong:.1f} dB")
    assert got >= MIN_TONEMAP_PSNR_DB and wrong < MIN_TONEMAP_PSNR_DB - 10


# --- colour tags and BT.601 / BT.709 -------------------------------------------------------------


def _tagged_clip(path, width: int, height: int, matrix: int | None) -> str:
    """Pure red (BT.601 Y'CbCr 81, 90, 240 when matrix is 5/6; BT.709's 63, 102, 240 when 1),
    tagged `matrix` (primaries and transfer alike; None: untagged)."""
    red = {None: (81, 90, 240), 5: (81, 90, 240), 6: (81, 90, 240), 1: (63, 102, 240)}[matrix]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        if matrix is not None:
            ctx = stream.codec_context
            ctx.color_primaries, ctx.color_trc, ctx.colorspace = matrix, 6 if matrix != 1 else 1, matrix
        for i in range(3):
            y = np.full((height, width), red[0], np.uint8)
            u = np.full((height // 2, width // 2), red[1], np.uint8)
            v = np.full((height // 2, width // 2), red[2], np.uint8)
            frame = av.VideoFrame.from_ndarray(
                np.vstack([y, u.reshape(-1, width), v.reshape(-1, width)]), format="yuv420p"
            )
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return str(path)


def _rendition_tags_and_red(run):
    found = {}
    for rung in run.plan.renditions:
        with av.open(str(run.outputs[rung.name])) as c:
            ctx = c.streams.video[0].codec_context
            frame = next(c.decode(video=0))
            y, u, v = (float(p.mean()) for p in planes(frame))
            found[rung.name] = (
                (int(ctx.color_primaries), int(ctx.color_trc), int(ctx.colorspace)),
                round(y),
                round(u),
                round(v),
            )
    return found


def test_a_bt601_source_is_converted_to_bt709_on_hd_rungs_and_keeps_its_tags_on_sd_rungs(tmp_path):
    run = run_pipeline(_tagged_clip(tmp_path / "sd601.mp4", 1280, 720, 6), tmp_path / "out", chunk_s=1.0)
    found = _rendition_tags_and_red(run)
    assert found["720p"][0] == (1, 1, 1)
    assert found["720p"][1:] == pytest.approx((63, 102, 240), abs=2), "the same red, in BT.709 Y'CbCr"
    for sd in ("480p", "360p"):
        assert found[sd][0] == (6, 6, 6)
        assert found[sd][1:] == pytest.approx((81, 90, 240), abs=2), "unchanged, as tagged"


@pytest.mark.parametrize("width,height,tags", [(640, 480, (6, 6, 6)), (720, 576, (5, 6, 5)), (1280, 720, (1, 1, 1))])
def test_an_untagged_source_is_tagged_as_players_guess_it(tmp_path, width, height, tags):
    """Untagged: BT.601 up to 576 lines (SMPTE 170M for 525-line sizes, BT.470 BG for 625),
    BT.709 above; the values are kept."""
    run = run_pipeline(_tagged_clip(tmp_path / "plain.mp4", width, height, None), tmp_path / "out", chunk_s=1.0)
    found = _rendition_tags_and_red(run)
    top = run.plan.renditions[0].name
    assert found[top][0] == tags
    assert found[top][1:] == pytest.approx((81, 90, 240), abs=2)


def test_an_sdr_progressive_source_has_no_filter_stage_and_frames_pass_untouched(tmp_path):
    src = make_clip(tmp_path / "plain.mp4", seconds=0.2, audio=False)
    with open_source(src) as c:
        stream = video_stream(c)
        path = FramePath(stream)
        frame = next(c.decode(stream))
        assert path.push(frame)[0] is frame
        assert (path.deinterlacer, path.tone_map, path.flatten, path.turn) == (None, None, None, None)
        scaler = RungScaler(320, 240, path.colour)
        assert (scaler.src_colorspace, scaler.dst_colorspace) == (None, None), "no matrix conversion either"


# --- interlaced -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order,container,chunks",
    [("tff", "mpegts", 1), ("bff", "mp4", 2)],  # a TS is one chunk; an MP4 is cut
)
def test_interlaced_video_comes_out_progressive_frame_for_frame(tmp_path, order, container, chunks):
    src = interlaced_clip(
        tmp_path / f"i.{'ts' if container == 'mpegts' else 'mp4'}",
        order,
        size="320x240",
        seconds=2.0,
        container=container,
    )
    source = idet(src)
    assert source[order] >= 0.8 * sum(source.values()), f"the source reads {order}: {source}"
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    assert len(run.chunks) == chunks
    (rung,) = run.plan.renditions
    found = idet(run.outputs[rung.name])
    total = sum(found.values())
    assert found["progressive"] >= 0.75 * total, f"mostly progressive: {found}"
    # send_frame: one frame per source frame, at its own time (25 frames/s, 50 fields/s)
    with av.open(src) as c:
        times = sorted(float(f.pts * f.time_base) for f in c.decode(video=0))
    with av.open(str(run.outputs[rung.name])) as c:
        out = sorted(float(f.pts * f.time_base) for f in c.decode(video=0))
    assert len(out) == len(times) == 50
    assert np.allclose(np.array(out) - out[0], np.array(times) - times[0], atol=1e-3)
    if chunks > 1:
        assert len({c.result.inits[rung.name] for c in run.chunks}) == 1


# --- transparency ------------------------------------------------------------------------------------


def _halves(frame: av.VideoFrame):
    """Mean Y, U, V of the left (transparent) and right (opaque red) thirds."""
    y, u, v = planes(frame.reformat(format="yuv444p"))
    w = y.shape[1]
    left = tuple(float(p[:, : w // 3].mean()) for p in (y, u, v))
    right = tuple(float(p[:, -w // 3 :].mean()) for p in (y, u, v))
    return left, right


@pytest.mark.parametrize("kind", list(ALPHA_CODECS))
def test_transparent_areas_come_out_black_and_opaque_ones_as_they_are(tmp_path, kind):
    src = alpha_clip(tmp_path, kind)
    run = run_pipeline(src, tmp_path / "out", chunk_s=1.0)
    frame, (codec, pix_fmt, _, _) = first_rendition_frame(run)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    left, right = _halves(frame)
    assert left == pytest.approx((16, 128, 128), abs=4), f"{kind}: the hidden green must not show: {left}"
    assert right[2] > 200 and 50 < right[0] < 95, f"{kind}: red stays red: {right}"
    # and the thumbnail (JPEG: full range)
    first_frame_jpeg(src, str(tmp_path / "t.jpg"))
    with av.open(str(tmp_path / "t.jpg")) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    third = rgb.shape[1] // 3
    assert rgb[:, :third].mean(axis=(0, 1)) == pytest.approx((0, 0, 0), abs=8), kind
    assert rgb[:, -third:].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=12), kind


@pytest.mark.parametrize("kind", ["vp9 webm", "png in mov"])
def test_the_background_colour_is_a_setting(tmp_path, kind):
    src = alpha_clip(tmp_path, kind)
    with open_source(src) as c:
        stream = video_stream(c)
        path = FramePath(stream, background=(255, 255, 255))
        from media.decoding import StreamDecoder

        frame = next(iter(StreamDecoder(stream).frames(c)))
        flat = path.push(frame)[0]
    scaled = RungScaler(320, 240, path.colour)(flat)
    left, _ = _halves(scaled)
    assert left == pytest.approx((235, 128, 128), abs=4), f"{kind}: white: {left}"

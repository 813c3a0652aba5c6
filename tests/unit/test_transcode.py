import random
import time

import av
import pytest

from services.pipeline.ladder import plan_ladder
from services.pipeline.probe import ProbeError, probe
from services.transcoder import encode
from services.transcoder.encode import Cancelled, MediaError, transcode
from tests.clips import make_clip, make_truncated


def inspect(path):
    """What a user checks in a rendition: codecs, size, orientation, duration."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        audio = c.streams.audio[0] if c.streams.audio else None
        first = frames[0]
        gray = first.to_ndarray(format="gray")
        return {
            "format": c.format.name,
            "video": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "size": (first.width, first.height),
            "sar": v.sample_aspect_ratio,
            "rotation": first.rotation,
            "audio": (audio.codec_context.name, audio.channels) if audio else None,
            "duration": c.duration / av.time_base,
            "frames": len(frames),
            "marker": _marker_corner(gray),
        }


def _marker_corner(gray):
    """Which corner holds the clip's white square (it is top-left in the stored frame)."""
    h, w = gray.shape
    corners = {
        "top-left": gray[: h // 8, : w // 8],
        "top-right": gray[: h // 8, -w // 8 :],
        "bottom-left": gray[-h // 8 :, : w // 8],
        "bottom-right": gray[-h // 8 :, -w // 8 :],
    }
    return max(corners, key=lambda k: corners[k].mean())


CASES = {
    # name: (make_clip arguments, expected rendition size, where the marker must show)
    "landscape+audio": (dict(), (320, 240), "top-left"),
    "no audio": (dict(audio=False), (320, 240), "top-left"),
    "portrait (rotation 90)": (dict(rotation=90), (240, 320), "top-right"),
    "upside down (rotation 180)": (dict(rotation=180, audio=False), (320, 240), "bottom-right"),
    "odd size 333x199 (mpeg4/mkv)": (dict(width=333, height=199, codec="mpeg4", container="matroska"), (332, 198), "top-left"),
    "tiny 160x90": (dict(width=160, height=90), (160, 90), "top-left"),
    "anamorphic SAR 4:3": (dict(sar=(4, 3)), (426, 240), "top-left"),
    "vp9 webm": (dict(codec="libvpx-vp9", container="webm", audio=False), (320, 240), "top-left"),
    "mpeg-ts (90 kHz timestamps)": (dict(container="mpegts"), (320, 240), "top-left"),
}


@pytest.mark.parametrize("case", CASES)
def test_rendition_is_upright_h264_aac_of_the_planned_size(tmp_path, case):
    kwargs, size, corner = CASES[case]
    src = make_clip(tmp_path / "src", seconds=1.0, **{"container": "mp4", **kwargs})
    info = probe(src)
    (spec,) = plan_ladder(info.width, info.height)  # all these sources are under 360p
    assert (spec.width, spec.height) == size

    dst = tmp_path / "out.mp4"
    result = transcode(src, str(dst), width=spec.width, height=spec.height, rotation=info.rotation, duration=info.duration)

    out = inspect(dst)
    assert out["video"] == "h264" and out["pix_fmt"] == "yuv420p"
    assert out["size"] == size and out["rotation"] == 0  # upright pixels, no display matrix
    assert out["sar"] in (None, 1)
    assert out["marker"] == corner
    has_audio = kwargs.get("audio", True)
    assert out["audio"] == (("aac", 2) if has_audio else None)
    assert out["duration"] == pytest.approx(info.duration, abs=0.2)
    assert out["frames"] == 30
    assert (result.width, result.height, result.has_audio) == (*size, has_audio)
    assert result.duration == pytest.approx(info.duration, abs=0.2)
    assert result.size == dst.stat().st_size


def test_downscale_to_a_lower_rung(tmp_path):
    src = make_clip(tmp_path / "src.mp4", width=640, height=480, seconds=0.5)
    specs = plan_ladder(640, 480)
    assert [s.name for s in specs] == ["480p", "360p"]
    transcode(src, str(tmp_path / "360.mp4"), width=specs[1].width, height=specs[1].height)
    assert inspect(tmp_path / "360.mp4")["size"] == (480, 360)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_truncated_upload_never_becomes_a_short_rendition(tmp_path, keep):
    src = make_truncated(tmp_path / "cut.mp4", seconds=3.0, keep=keep)
    dst = tmp_path / "out.mp4"
    try:
        info = probe(src)
    except ProbeError:
        return  # refused up front: fine
    with pytest.raises(MediaError) as e:
        transcode(src, str(dst), width=info.width, height=info.height, duration=info.duration)
    assert e.value.code == "bad_media"
    assert not dst.exists()


def test_garbage_input_is_bad_media(tmp_path):
    src = tmp_path / "junk.mp4"
    src.write_bytes(random.Random(2).randbytes(5000))
    with pytest.raises(MediaError) as e:
        transcode(str(src), str(tmp_path / "out.mp4"), width=320, height=240)
    assert e.value.code == "bad_media"


def test_should_stop_cancels_quickly_and_leaves_no_output(tmp_path):
    src = make_clip(tmp_path / "src.mp4", seconds=2.0)
    dst = tmp_path / "out.mp4"
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5

    started = time.monotonic()
    with pytest.raises(Cancelled):
        transcode(src, str(dst), width=320, height=240, should_stop=should_stop)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 6
    assert not dst.exists()


def test_progress_increases_and_ends_at_100(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "PROGRESS_INTERVAL_S", 0.0)  # report every frame in this test
    src = make_clip(tmp_path / "src.mp4", seconds=1.0)
    seen = []
    transcode(src, str(tmp_path / "out.mp4"), width=320, height=240, duration=1.0, on_progress=seen.append)
    assert len(seen) > 10
    assert seen == sorted(seen) and 0 <= seen[0] and seen[-1] == 100.0


def test_progress_is_rate_limited(tmp_path):
    src = make_clip(tmp_path / "src.mp4", seconds=1.0)
    seen = []
    transcode(src, str(tmp_path / "out.mp4"), width=320, height=240, on_progress=seen.append)
    assert seen == [100.0]  # a sub-second task reports only its completion


def test_faststart_cut_in_the_middle_opens_but_transcode_refuses(tmp_path):
    # The trap from the design guide: the index is intact, so the probe sees a healthy
    # 3 s video; only the decode loop can notice the media stops half-way.
    src = make_truncated(tmp_path / "cut.mp4", seconds=3.0, keep=0.5)
    info = probe(src)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    with pytest.raises(MediaError, match="stops at"):
        transcode(src, str(tmp_path / "out.mp4"), width=info.width, height=info.height)
    assert not (tmp_path / "out.mp4").exists()

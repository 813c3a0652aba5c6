import random

import pytest

from media.problems import MediaError
from services.pipeline.probe import probe
from tests.clips import make_audio_only, make_clip, make_image, make_truncated


def test_landscape_with_audio(tmp_path):
    src = make_clip(tmp_path / "a.mp4", seconds=1.0)
    info = probe(src)
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert info.fps == pytest.approx(30)
    assert info.size == (tmp_path / "a.mp4").stat().st_size
    assert "mp4" in info.container


def test_without_audio(tmp_path):
    info = probe(make_clip(tmp_path / "a.mkv", audio=False, codec="mpeg4"))
    assert info.audio_codec is None and info.video_codec == "mpeg4"
    assert (info.width, info.height) == (320, 240)


@pytest.mark.parametrize("rotation,shown", [(90, (240, 320)), (180, (320, 240)), (270, (240, 320))])
def test_rotation_is_applied_to_the_displayed_size(tmp_path, rotation, shown):
    info = probe(make_clip(tmp_path / "r.mp4", rotation=rotation, audio=False))
    assert info.rotation == rotation
    assert (info.width, info.height) == shown


def test_sample_aspect_ratio_is_applied(tmp_path):
    info = probe(make_clip(tmp_path / "s.mp4", sar=(4, 3), audio=False))
    assert (info.width, info.height) == (426, 240)  # 320 * 4/3, rounded down to even


def test_odd_size_is_reported_even(tmp_path):
    info = probe(make_clip(tmp_path / "o.mkv", width=333, height=199, codec="mpeg4", audio=False))
    assert (info.width, info.height) == (332, 198)


def refused(path, **limits) -> str:
    with pytest.raises(MediaError) as e:
        probe(str(path), **limits)
    assert e.value.message
    return e.value.code


def test_refuses_what_is_not_a_video(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(random.Random(1).randbytes(20000))
    (tmp_path / "notes.txt").write_text("hello world, this is not a video\n" * 50)  # opens as "tty"
    (tmp_path / "subs.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n")
    assert refused(tmp_path / "empty.mp4") == "not_media"
    assert refused(tmp_path / "random.mp4") == "not_media"
    assert refused(tmp_path / "notes.txt") == "not_media"
    assert refused(tmp_path / "subs.srt") == "not_media"
    assert refused(make_image(tmp_path / "still.png")) == "not_media"
    assert refused(make_image(tmp_path / "still.jpg")) == "not_media"


def test_refuses_audio_only(tmp_path):
    assert refused(make_audio_only(tmp_path / "song.m4a")) == "no_video_stream"


def test_limits_apply_to_the_displayed_size_and_duration(tmp_path):
    portrait = make_clip(tmp_path / "p.mp4", rotation=90, audio=False, seconds=0.5)
    assert refused(portrait, max_width=300, max_height=300) == "too_large"  # shown 240x320
    assert probe(portrait, max_width=240, max_height=320).height == 320
    assert refused(portrait, max_duration_s=0.2) == "too_long"


def test_truncated_file_is_refused_when_the_first_frame_is_gone(tmp_path):
    assert refused(make_truncated(tmp_path / "t.mp4", keep=0.03)) in {"not_media", "unreadable"}

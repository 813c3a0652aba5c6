import random

import av
import pytest

from media.problems import MediaError
from services.thumbnailer.snapshot import first_frame_jpeg
from tests.clips import make_clip


def read_jpeg(path):
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mjpeg"
        frame = next(c.decode(video=0))
    gray = frame.to_ndarray(format="gray")
    h, w = gray.shape
    top_left, top_right = gray[: h // 8, : w // 8].mean(), gray[: h // 8, -w // 8 :].mean()
    return (frame.width, frame.height), "top-left" if top_left > top_right else "top-right"


def test_landscape(tmp_path):
    src = make_clip(tmp_path / "a.mp4", seconds=0.2)
    assert first_frame_jpeg(src, str(tmp_path / "t.jpg")) == (320, 240)
    assert read_jpeg(tmp_path / "t.jpg") == ((320, 240), "top-left")
    assert (tmp_path / "t.jpg").read_bytes()[:2] == b"\xff\xd8"  # a real JPEG file


def test_portrait_is_turned_upright(tmp_path):
    src = make_clip(tmp_path / "p.mp4", seconds=0.2, rotation=90)
    assert first_frame_jpeg(src, str(tmp_path / "t.jpg")) == (240, 320)
    assert read_jpeg(tmp_path / "t.jpg") == ((240, 320), "top-right")


def test_scaled_down_to_max_width_keeping_the_aspect(tmp_path):
    src = make_clip(tmp_path / "a.mp4", width=640, height=360, seconds=0.2, audio=False)
    assert first_frame_jpeg(src, str(tmp_path / "t.jpg"), max_width=320) == (320, 180)
    assert read_jpeg(tmp_path / "t.jpg")[0] == (320, 180)


@pytest.mark.parametrize(
    "kwargs,size",
    [
        (dict(sar=(4, 3)), (426, 240)),  # anamorphic: shown wider than stored
        (dict(width=333, height=199, codec="mpeg4", container="matroska"), (332, 198)),
        (dict(width=160, height=90), (160, 90)),  # never upscaled
    ],
)
def test_displayed_shape(tmp_path, kwargs, size):
    src = make_clip(tmp_path / "s", seconds=0.2, **{"container": "mp4", **kwargs})
    assert first_frame_jpeg(src, str(tmp_path / "t.jpg")) == size
    assert read_jpeg(tmp_path / "t.jpg")[0] == size


def test_garbage_is_bad_media(tmp_path):
    src = tmp_path / "junk.mp4"
    src.write_bytes(random.Random(3).randbytes(5000))
    with pytest.raises(MediaError) as e:
        first_frame_jpeg(str(src), str(tmp_path / "t.jpg"))
    assert e.value.code == "bad_media"
    assert not (tmp_path / "t.jpg").exists()

import pytest

from services.pipeline.ladder import plan_ladder


def sizes(specs):
    return [(s.name, s.width, s.height) for s in specs]


def test_1080p_landscape_gets_the_full_ladder_largest_first():
    assert sizes(plan_ladder(1920, 1080)) == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]


def test_portrait_stays_portrait():
    assert sizes(plan_ladder(1080, 1920)) == [
        ("1080p", 1080, 1920),
        ("720p", 720, 1280),
        ("480p", 480, 854),
        ("360p", 360, 640),
    ]


def test_no_rung_upscales():
    assert [s.name for s in plan_ladder(1280, 720)] == ["720p", "480p", "360p"]
    assert [s.name for s in plan_ladder(3840, 2160)][0] == "1080p"  # capped at 1080p
    assert sizes(plan_ladder(640, 480)) == [("480p", 640, 480), ("360p", 480, 360)]


def test_small_source_gets_one_rendition_at_its_own_size():
    assert sizes(plan_ladder(320, 240)) == [("240p", 320, 240)]
    assert sizes(plan_ladder(240, 320)) == [("240p", 240, 320)]
    assert sizes(plan_ladder(333, 199)) == [("198p", 332, 198)]  # even, never larger


@pytest.mark.parametrize("w,h", [(1920, 1080), (1080, 1920), (1000, 1000), (2560, 1080), (854, 480), (333, 199)])
def test_every_rendition_is_even_and_keeps_the_aspect_ratio(w, h):
    for s in plan_ladder(w, h):
        assert s.width % 2 == 0 and s.height % 2 == 0
        assert min(s.width, s.height) <= min(w, h)
        assert abs(s.width / s.height - w / h) < 0.01 * (w / h)


def test_invalid_size_is_refused():
    with pytest.raises(ValueError):
        plan_ladder(0, 1080)

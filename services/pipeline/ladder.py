"""The rendition ladder: which sizes to transcode an upload into."""

from __future__ import annotations

from shared.contracts import RenditionSpec

RUNGS = (1080, 720, 480, 360)  # heights of a landscape ladder (shorter side in general)


def plan_ladder(width: int, height: int) -> list[RenditionSpec]:
    """Renditions for a source DISPLAYED at width x height, largest first.

    Rungs are sizes of the shorter side, so portrait video keeps its orientation and gets
    the same quality steps as landscape. No rung upscales; a source smaller than the
    lowest rung gets one rendition at its own size.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid source size {width}x{height}")
    short, long_ = min(width, height), max(width, height)
    rungs = [r for r in RUNGS if r <= short] or [max(2, short // 2 * 2)]  # round down: no upscale
    specs = []
    for rung in rungs:
        other = _even(long_ * rung / short)  # keep the aspect ratio
        w, h = (other, rung) if width >= height else (rung, other)
        specs.append(RenditionSpec(name=f"{rung}p", width=w, height=h))
    return specs


def _even(x: float) -> int:
    # x264 4:2:0 needs even sizes; round half up so 853.3 -> 854, 333 -> 334.
    return max(2, int(x / 2 + 0.5) * 2)

"""The rendition ladder: which sizes an upload is encoded into, and at what rate control.

One table, LADDER: each rung's shorter side, its x264 CRF and the VBV cap that bounds its
peak bit rate (so playlists can state honest bandwidths), its H.264 profile and level.
The caps follow Apple's HLS Authoring Specification bit-rate ladder for H.264 (1080p
7800 kb/s, 720p 4500, 540p 2000, 432p 1100; here 480p and 360p take the two lower rows);
the buffer is two seconds at the cap. The levels cover up to 60 frames/s at each size
(H.264 Annex A, Table A-1: 1080p60 needs 4.2, 720p60 3.2, 480p60 and 360p60 3.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from shared.contracts import RenditionSpec


@dataclass(frozen=True)
class Rung:
    short_side: int  # pixels
    crf: int
    maxrate_kbps: int
    bufsize_kbit: int
    profile: str
    level: str

    def spec(self, name: str, width: int, height: int) -> RenditionSpec:
        """This rung's rate control at one size: every field but `short_side` is a
        RenditionSpec field of the same name."""
        rate_control = asdict(self)
        del rate_control["short_side"]
        return RenditionSpec(name=name, width=width, height=height, **rate_control)


LADDER = (
    Rung(1080, crf=23, maxrate_kbps=7800, bufsize_kbit=15600, profile="high", level="4.2"),
    Rung(720, crf=23, maxrate_kbps=4500, bufsize_kbit=9000, profile="high", level="3.2"),
    Rung(480, crf=23, maxrate_kbps=2000, bufsize_kbit=4000, profile="main", level="3.1"),
    Rung(360, crf=23, maxrate_kbps=1100, bufsize_kbit=2200, profile="main", level="3.1"),
)
RUNGS = tuple(r.short_side for r in LADDER)  # heights of a landscape ladder (shorter side in general)


def plan_ladder(width: int, height: int) -> list[RenditionSpec]:
    """Renditions for a source DISPLAYED at width x height, largest first.

    Rungs are sizes of the shorter side, so portrait video keeps its orientation and gets
    the same quality steps as landscape. No rung upscales; a source smaller than the
    lowest rung gets one rendition at its own size, with the lowest rung's rate control.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid source size {width}x{height}")
    short, long_ = min(width, height), max(width, height)
    rungs = [r for r in LADDER if r.short_side <= short]
    sides = [r.short_side for r in rungs] or [max(2, short // 2 * 2)]  # round down: no upscale
    rungs = rungs or [LADDER[-1]]
    specs = []
    for side, rung in zip(sides, rungs):
        other = _even(long_ * side / short)  # keep the aspect ratio
        w, h = (other, side) if width >= height else (side, other)
        specs.append(rung.spec(f"{side}p", w, h))
    return specs


def _even(x: float) -> int:
    # x264 4:2:0 needs even sizes; round half up so 853.3 -> 854, 333 -> 334.
    return max(2, int(x / 2 + 0.5) * 2)

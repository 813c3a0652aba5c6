"""What the frame filters cost.

1. On an SDR progressive source they must cost nothing: encode_chunk on the 10 s 1080p30
   clip to the 1080/720/480/360 ladder (x264 veryfast, one chunk), today's code against the
   code before the frame path (services/transcoder/{chunk,media,cmaf}.py at BEFORE, loaded
   from git into a package of its own), interleaved in one process (ABBA order), ROUNDS runs
   each. Target: today within 2% of before, on the median CPU seconds of the process (user +
   system, every thread): on a machine other work keeps busy, wall time varies by tens of
   percent from run to run, CPU time by a few; wall medians are reported beside it.
2. A 2 s 3840x2160 HLG clip (10-bit HEVC, BT.2020, the issue's recipe made by Debian's
   ffmpeg) through the media path as the mesh runs it, stage by stage: probe, chunk (decode,
   tone map, scale, encode the 2160/1080/720/480/360 ladder), stitch, thumbnail.

`python -m bench.frame_filters` runs it alone; writes bench/results/frame_filters.json.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from .common import ROOT, clip, console, median, own_cpu_seconds, verdict, write_result

BEFORE = "3507cac"  # the last commit before the frame path (media/) landed
ROUNDS = 5
TARGET = 1.02


def _before_package(tmp: str):
    """services/transcoder's media code as it was at BEFORE, importable as `before_transcoder`."""
    package = Path(tmp) / "before_transcoder"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("chunk", "media", "cmaf"):
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:services/transcoder/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, tmp)
    return importlib.import_module("before_transcoder.chunk")


def _encode(module, src: str, rungs, out: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one encode_chunk."""
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), own_cpu_seconds()
    module.encode_chunk(src, out, rungs=rungs, segment_s=6.0, preset="veryfast")
    return time.perf_counter() - t0, own_cpu_seconds() - c0


def sdr_overhead(tmp: str) -> dict:
    from services.pipeline.ladder import plan_ladder
    from services.transcoder import chunk as now

    before = _before_package(tmp)
    src = clip(10.0)
    rungs = plan_ladder(1920, 1080)
    _encode(now, src, rungs, os.path.join(tmp, "warm"))  # page cache, x264's first allocations
    wall: dict[str, list[float]] = {"before": [], "now": []}
    cpu: dict[str, list[float]] = {"before": [], "now": []}
    for n in range(ROUNDS):
        for label, module in (("before", before), ("now", now)) if n % 2 == 0 else (("now", now), ("before", before)):
            with console.status(f"round {n + 1}/{ROUNDS}: {label}"):
                w, c = _encode(module, src, rungs, os.path.join(tmp, label))
            wall[label].append(round(w, 3))
            cpu[label].append(round(c, 3))
        console.log(
            f"round {n + 1}: before {wall['before'][-1]:.2f} s ({cpu['before'][-1]:.2f} CPU s), "
            f"now {wall['now'][-1]:.2f} s ({cpu['now'][-1]:.2f} CPU s)"
        )
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "median_cpu_before_s": median(cpu["before"]),
        "median_cpu_now_s": median(cpu["now"]),
        "median_wall_before_s": median(wall["before"]),
        "median_wall_now_s": median(wall["now"]),
        "ratio": round(median(cpu["now"]) / median(cpu["before"]), 4),
        "wall_ratio": round(median(wall["now"]) / median(wall["before"]), 4),
    }


# The clip's ffmpeg options, written as on a command line (no value holds a space).
HLG_2160P = (
    "-f lavfi -i testsrc2=s=3840x2160:r=30:d=2 -vf format=yuv420p10le "
    "-c:v libx265 -preset ultrafast -x265-params colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc:log-level=error "
    "-color_primaries bt2020 -color_trc arib-std-b67 -colorspace bt2020nc -tag:v hvc1"
)


def hdr_4k(tmp: str) -> dict | None:
    from services.pipeline.plan import plan_video
    from services.pipeline.probe import probe
    from services.thumbnailer.snapshot import first_frame_jpeg
    from services.transcoder import chunk
    from services.transcoder.stitch import stitch

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        console.print("[red]Debian's ffmpeg is missing: no 4K HDR clip (make test installs it)[/]")
        return None
    src = os.path.join(tmp, "hlg-2160p.mp4")
    with console.status("making the 2 s 3840x2160 HLG clip (x265)"):
        subprocess.run([ffmpeg, "-v", "error", "-y", *HLG_2160P.split(), src], check=True)
    stages = {}
    t0 = time.perf_counter()
    info = probe(src, max_width=3840, max_height=3840)
    stages["probe"] = time.perf_counter() - t0
    plan = plan_video(info, chunk_s=6.0, segment_s=6.0)
    out = os.path.join(tmp, "hdr-out")
    t0 = time.perf_counter()
    result = chunk.encode_chunk(src, out, rungs=plan.renditions, segment_s=plan.segment_s, preset="veryfast")
    stages["chunk (decode, tone map, 5 rungs)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for rung in plan.renditions:
        track = os.path.join(tmp, f"{rung.name}.cmaf")
        with open(track, "wb") as fh:
            for part in [chunk.init_path(out, rung.name)] + [
                chunk.segment_path(out, rung.name, s.index) for s in result.segments
            ]:
                fh.write(Path(part).read_bytes())
        stitch(track, os.path.join(tmp, f"{rung.name}.mp4"))
    stages["stitch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first_frame_jpeg(src, os.path.join(tmp, "thumb.jpg"))
    stages["thumbnail"] = time.perf_counter() - t0
    # the frame path alone: decode and tone map every frame, no encoding
    from media.decoding import StreamDecoder
    from media.frames import FramePath
    from media.source import open_source, video_stream

    t0 = time.perf_counter()
    with open_source(src) as inp:
        stream = video_stream(inp)
        frames = sum(1 for _ in FramePath(stream).frames(StreamDecoder(stream).frames(inp)))
    decode_and_tone_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open_source(src) as inp:
        stream = video_stream(inp)
        sum(1 for _ in StreamDecoder(stream).frames(inp))
    decode_only = time.perf_counter() - t0
    return {
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "total_s": round(sum(stages.values()), 2),
        "rungs": [r.name for r in plan.renditions],
        "frames": frames,
        "decode_s": round(decode_only, 2),
        "decode_and_tone_map_s": round(decode_and_tone_map, 2),
        "tone_map_ms_per_frame": round(1000 * (decode_and_tone_map - decode_only) / frames, 1),
    }


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-filters-") as tmp:
        sdr = sdr_overhead(tmp)
        hdr = hdr_4k(tmp)
    return {"sdr_1080p_ladder": sdr, "hdr_2160p": hdr, "target_ratio": TARGET}


def table(result: dict) -> Table:
    t = Table(title="frame filters: cost on SDR progressive, and a 2 s 4K HDR clip through the media path")
    for col in ("measure", "result", "target"):
        t.add_column(col)
    sdr = result["sdr_1080p_ladder"]
    t.add_row(
        "encode_chunk, 10 s 1080p30 to 4 rungs (veryfast), median of "
        f"{len(sdr['cpu_s']['now'])}: now vs before the frame path, CPU seconds",
        f"{sdr['median_cpu_now_s']:.2f} vs {sdr['median_cpu_before_s']:.2f} s: {sdr['ratio']:.3f}x",
        f"<= {result['target_ratio']}x {verdict(sdr['ratio'] <= result['target_ratio'])}",
    )
    t.add_row(
        "the same, wall seconds",
        f"{sdr['median_wall_now_s']:.2f} vs {sdr['median_wall_before_s']:.2f} s: {sdr['wall_ratio']:.3f}x",
        "–",
    )
    hdr = result["hdr_2160p"]
    if hdr:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in hdr["stages_s"].items())
        t.add_row("2 s 3840x2160 HLG through the media path", f"{hdr['total_s']:.2f} s ({stages})", "–")
        t.add_row(
            "of which the tone map (decode alone vs decode + tone map)",
            f"{hdr['decode_s']:.2f} vs {hdr['decode_and_tone_map_s']:.2f} s: {hdr['tone_map_ms_per_frame']:.1f} ms/frame",
            "–",
        )
    return t


if __name__ == "__main__":
    t0 = time.monotonic()
    data = run()
    data["bench_seconds"] = round(time.monotonic() - t0, 1)
    path = write_result("frame_filters", data)
    console.print(table(data))
    console.print(f"wrote {path}")

"""transcoder_rss: the transcoder's peak memory on a long and a short 720p clip.

services.transcoder.encode.transcode() runs in a fresh child Python per clip (720p30
H.264+AAC -> 854x480 rendition, the service's preset and CRF). The child's peak RSS is
read three ways: its own VmHWM at the end, its own getrusage(RUSAGE_SELF).ru_maxrss, and
VmRSS sampled every 50 ms from outside (the trace shows whether memory
climbs with time). A 15 s and a 60 s clip in the same run: a streaming transcoder has the
same peak for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from rich.table import Table

from .common import ROOT, RssSampler, console, mib, verdict

NAME = "transcoder_rss"
CLIPS_S = (15.0, 60.0)
SRC_W, SRC_H, FPS = 1280, 720, 30
OUT_W, OUT_H = 854, 480
BOUND_MIB = 300  # the design guide measured ~270 MiB for the whole 1080p ladder in-process
FLAT_SLACK_MIB = 16
TIMEOUT_S = 300

CHILD = r"""
import json, os, resource, sys, time

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

from services.transcoder.encode import transcode
from shared import config

settings = config.load({})
src, dst, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
before = kib("VmRSS")
t0 = time.perf_counter()
result = transcode(src, dst, width=width, height=height, preset=settings.transcode_preset, crf=settings.transcode_crf)
print(json.dumps({
    "seconds": time.perf_counter() - t0,
    "rss_after_imports_kib": before,
    "vm_hwm_kib": kib("VmHWM"),
    "ru_maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "output": {"width": result.width, "height": result.height, "duration": result.duration,
               "has_audio": result.has_audio, "size": result.size},
}))
"""


def measure(src: str, dst: str) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, src, dst, str(OUT_W), str(OUT_H)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    with RssSampler(proc.pid, 0.05) as sampler:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # communicate() reaped the child; RUSAGE_CHILDREN's maximum is across all children,
    # so the per-child figure is the child's own ru_maxrss printed above.
    if proc.returncode != 0:
        raise RuntimeError(f"transcode child exited {proc.returncode}: {err[-2000:]}")
    child = json.loads(out.strip().splitlines()[-1])
    trace = sampler.samples
    quarters = {}
    if trace:
        end = trace[-1][0]
        for q in (0.25, 0.5, 0.75, 1.0):
            window = [k for t, k in trace if t <= q * end]
            quarters[f"peak_to_{int(q * 100)}pct_mib"] = mib(max(window)) if window else None
    return {
        "seconds": round(child["seconds"], 2),
        "rss_after_imports_mib": mib(child["rss_after_imports_kib"]),
        "vm_hwm_mib": mib(child["vm_hwm_kib"]),
        # Includes the pre-exec (forked bench process) high-water mark: not the transcoder's.
        "ru_maxrss_incl_pre_exec_mib": mib(child["ru_maxrss_self_kib"]),
        "rss_peak_sampled_mib": mib(sampler.peak_kib),
        **quarters,
        "output": child["output"],
        "rss_trace_mib": [[round(t, 2), mib(k)] for t, k in trace[:: max(1, len(trace) // 200)]],
    }


def run() -> dict:
    from tests.clips import make_clip

    runs = []
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-rss-") as tmp:
        for seconds in CLIPS_S:
            src = os.path.join(tmp, f"src-{int(seconds)}s.mp4")
            with console.status(f"generating a {seconds:g} s {SRC_W}x{SRC_H} clip"):
                t0 = time.perf_counter()
                make_clip(src, width=SRC_W, height=SRC_H, seconds=seconds, fps=FPS, audio=True)
            console.log(f"clip {seconds:g} s: {os.path.getsize(src) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s")
            with console.status(f"transcoding the {seconds:g} s clip to {OUT_W}x{OUT_H} in a child process"):
                row = measure(src, os.path.join(tmp, f"out-{int(seconds)}s.mp4"))
            row.update(clip_seconds=seconds, clip_bytes=os.path.getsize(src))
            console.log(
                f"{seconds:g} s clip: {row['seconds']} s, VmHWM {row['vm_hwm_mib']} MiB "
                f"(after imports {row['rss_after_imports_mib']} MiB), sampled peak {row['rss_peak_sampled_mib']} MiB"
            )
            runs.append(row)
            os.remove(src)
    short, long_ = runs
    peak = max(r["vm_hwm_mib"] for r in runs)
    growth = round(long_["vm_hwm_mib"] - short["vm_hwm_mib"], 1)
    return {
        "source": f"{SRC_W}x{SRC_H} {FPS} fps H.264+AAC",
        "rendition": f"{OUT_W}x{OUT_H}",
        "runs": runs,
        "summary": {
            "peak_mib": peak,
            "growth_15s_to_60s_mib": growth,
            "bound_mib": BOUND_MIB,
            "met_bounded": peak < BOUND_MIB,
            "met_flat": growth <= FLAT_SLACK_MIB,
        },
    }


def table(result: dict) -> Table:
    t = Table(title=f"transcoder_rss: transcode() of a 720p30 clip to {result['rendition']} in a child process")
    for col in ("clip", "time", "RSS after imports", "VmHWM", "sampled peak", "sampled peak by 25/50/75/100% of the run"):
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            f"{r['clip_seconds']:g} s", f"{r['seconds']} s", f"{r['rss_after_imports_mib']} MiB", f"{r['vm_hwm_mib']} MiB",
            f"{r['rss_peak_sampled_mib']} MiB",
            " / ".join(str(r.get(f"peak_to_{q}pct_mib")) for q in (25, 50, 75, 100)),
        )
    s = result["summary"]
    t.caption = (f"peak {s['peak_mib']} MiB (bounded < {s['bound_mib']} MiB: {verdict(s['met_bounded'])}); "
                 f"15 s -> 60 s: {s['growth_15s_to_60s_mib']:+} MiB (flat: {verdict(s['met_flat'])})")
    return t

"""transcoder_rss: the transcoder's peak memory encoding a 1080p chunk into the four rungs.

services.transcoder.chunk.encode_chunk() runs in a fresh child Python per measurement, on a
generated 1080p30 H.264+AAC clip, with the ladder (services.pipeline.ladder.plan_ladder:
1080/720/480/360) and the service's preset and segment grid, exactly as an EncodeChunk task
calls it (the source read from a local file instead of the object store):

- the whole 15 s clip as one chunk, and the whole 60 s clip as one chunk (a source that
  cannot be cut is one chunk of any length, so memory must not grow with the chunk);
- one 6 s chunk from the middle of the 60 s clip (segment 5: seek, pre-roll decode from
  the keyframe before it, encode), the size of a default task.

The child's peak is its own VmHWM at the end; its VmRSS is also sampled every 50 ms from
outside (the JSON keeps the trace; the table shows the peak reached by 25/50/75/100 % of
the run, which stays level when memory does not grow with the frames encoded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from rich.table import Table

from .common import ROOT, RssSampler, clip, console, figures_table, loadavg, mib, verdict

NAME = "transcoder_rss"
WIDTH, HEIGHT, FPS = 1920, 1080, 30
BOUND_MIB = 800
FLAT_SHARE = 0.05  # the 60 s whole-clip peak within 5 % of the 15 s one
TIMEOUT_S = 600
CASES = (
    # (label, clip seconds, first segment, end segment or None)
    ("15 s clip, one chunk", 15.0, 0, None),
    ("60 s clip, one chunk", 60.0, 0, None),
    ("60 s clip, 6 s chunk (segment 5)", 60.0, 5, 6),
)

CHILD = r"""
import json, os, resource, sys, time

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

from services.pipeline.ladder import plan_ladder
from services.pipeline.settings import PipelineSettings
from services.transcoder.chunk import encode_chunk
from services.transcoder.settings import TranscoderSettings

segment_s = PipelineSettings.load().segment_s
transcoder = TranscoderSettings.load()  # VIDMESH_X264_THREADS sets x264's threads per rung (0: its own)
src, out, first, end, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
end = None if end == "none" else int(end)
before = kib("VmRSS")
t0 = time.perf_counter()
r0 = resource.getrusage(resource.RUSAGE_SELF)
result = encode_chunk(src, out, rungs=plan_ladder(width, height), segment_s=segment_s,
                      first_segment=first, end_segment=end, preset=transcoder.transcode_preset,
                      threads=transcoder.x264_threads)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "seconds": time.perf_counter() - t0,
    "cpu_seconds": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
    "rss_after_imports_kib": before,
    "vm_hwm_kib": kib("VmHWM"),
    "threads": len(os.listdir("/proc/self/task")),
    "frames": result.frames,
    "segments": [s.index for s in result.segments],
    "bytes": sum(sum(s.sizes.values()) for s in result.segments),
}))
"""


def measure(src: str, out: str, first: int, end: int | None) -> dict:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            src,
            out,
            str(first),
            "none" if end is None else str(end),
            str(WIDTH),
            str(HEIGHT),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    with RssSampler(proc.pid, 0.05) as sampler:
        try:
            stdout, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"encode_chunk child exited {proc.returncode}: {err[-2000:]}")
    child = json.loads(stdout.strip().splitlines()[-1])
    trace = sampler.samples
    quarters = {}
    if trace:
        last = trace[-1][0]
        for q in (0.25, 0.5, 0.75, 1.0):
            window = [k for t, k in trace if t <= q * last]
            quarters[f"peak_to_{int(q * 100)}pct_mib"] = mib(max(window)) if window else None
    return {
        "seconds": round(child["seconds"], 2),
        "cpu_seconds": round(child["cpu_seconds"], 2),
        "rss_after_imports_mib": mib(child["rss_after_imports_kib"]),
        "vm_hwm_mib": mib(child["vm_hwm_kib"]),
        "rss_peak_sampled_mib": mib(sampler.peak_kib),
        "threads_at_end": child["threads"],
        "frames": child["frames"],
        "segments": child["segments"],
        "output_bytes": child["bytes"],
        **quarters,
        "rss_trace_mib": [[round(t, 2), mib(k)] for t, k in trace[:: max(1, len(trace) // 200)]],
    }


def run() -> dict:
    runs = []
    load0 = loadavg()
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-rss-") as tmp:
        for n, (label, seconds, first, end) in enumerate(CASES):
            src = clip(seconds, WIDTH, HEIGHT, FPS)
            with console.status(f"encode_chunk: {label}, into 4 rungs in a child process"):
                row = measure(src, os.path.join(tmp, f"out-{n}"), first, end)
            row.update(case=label, clip_seconds=seconds, first_segment=first, end_segment=end, loadavg=loadavg())
            console.log(
                f"{label}: {row['frames']} frames in {row['seconds']} s (cpu {row['cpu_seconds']} s), "
                f"VmHWM {row['vm_hwm_mib']} MiB (after imports {row['rss_after_imports_mib']} MiB), "
                f"sampled peak {row['rss_peak_sampled_mib']} MiB"
            )
            runs.append(row)
    short, long_ = runs[0], runs[1]
    peak = max(r["vm_hwm_mib"] for r in runs)
    growth = round(long_["vm_hwm_mib"] - short["vm_hwm_mib"], 1)
    share = round(growth / short["vm_hwm_mib"], 4)
    return {
        "source": f"{WIDTH}x{HEIGHT} {FPS} fps H.264+AAC",
        "rungs": "1080p, 720p, 480p, 360p",
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
        "summary": {
            "peak_mib": peak,
            "chunk_6s_mib": runs[2]["vm_hwm_mib"],
            "growth_15s_to_60s_mib": growth,
            "growth_share": share,
            "bound_mib": BOUND_MIB,
            "met_bounded": peak <= BOUND_MIB,
            "met_flat": abs(share) <= FLAT_SHARE,
            "loadavg": [load0, loadavg()],
        },
    }


def table(result: dict) -> Table:
    t = figures_table(
        "transcoder_rss: encode_chunk() of a 1080p30 clip into 4 rungs, in a child process",
        ("case", "frames", "time (CPU)", "RSS after imports", "VmHWM", "sampled peak by 25/50/75/100% of the run"),
    )
    for r in result["runs"]:
        t.add_row(
            r["case"],
            str(r["frames"]),
            f"{r['seconds']} s ({r['cpu_seconds']} s)",
            f"{r['rss_after_imports_mib']} MiB",
            f"{r['vm_hwm_mib']} MiB",
            " / ".join(str(r.get(f"peak_to_{q}pct_mib")) for q in (25, 50, 75, 100)),
        )
    s = result["summary"]
    t.caption = (
        f"peak {s['peak_mib']} MiB (<= {s['bound_mib']} MiB: {verdict(s['met_bounded'])}); whole clip 15 s -> 60 s: "
        f"{s['growth_15s_to_60s_mib']:+} MiB, {100 * s['growth_share']:+.1f} % (within 5 %: {verdict(s['met_flat'])}); "
        f"{result['cpus']} CPUs; load average {s['loadavg']}"
    )
    return t

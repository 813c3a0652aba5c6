"""upload: stream a large body through the gateway; throughput and the gateway's peak RSS.

The body is generated on the fly (1 MiB pieces, never the whole body in memory) and is
not media, so the mesh stores it, probes it and refuses it with 422 not_media: the figure
is the streaming path end to end, from the first byte sent to the response. A 256 MiB and
a 1 GiB body run against the same gateway process, so a flat peak RSS shows the gateway
does not hold bodies in memory.
"""

from __future__ import annotations

import random
import time

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from .common import (
    GiB,
    MiB,
    RssSampler,
    console,
    figures_table,
    mib,
    proc_status_kib,
    reset_peak_rss,
    running_mesh,
    service_pid,
    verdict,
)

NAME = "upload"
SIZES = (256 * MiB, 1 * GiB)  # the small one first: VmHWM is reset between bodies
PIECE = 1 * MiB
TARGET_PEAK_BYTES = 200_000_000  # 200 MB
FLAT_SLACK_KIB = 16 * 1024  # two object-store publish windows of 8 MiB
TIMEOUT_S = 600


def body(size: int, progress: Progress, task, marks: dict):
    """`size` random-ish bytes in 1 MiB pieces: one random block with a counter in front."""
    block = random.Random(7).randbytes(PIECE)
    sent = 0
    n = 0
    while sent < size:
        piece = n.to_bytes(8, "big") + block[8 : min(PIECE, size - sent)]
        n += 1
        sent += len(piece)
        yield piece
        progress.update(task, completed=sent)
    marks["sent"] = time.perf_counter()


def upload_once(mesh, pid: int, size: int) -> dict:
    reset = reset_peak_rss(pid)
    idle_kib = proc_status_kib(pid, "VmRSS")
    marks: dict = {}
    shown = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress("[progress.description]{task.description}", *shown, console=console, transient=True) as progress:
        task = progress.add_task(f"upload {size // MiB} MiB", total=size)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), "X-Filename": "noise.bin"}
        client = httpx.Client(
            base_url=mesh.url,
            headers={"Authorization": f"Bearer {mesh.KEYS['alice']}"},
            timeout=httpx.Timeout(TIMEOUT_S, connect=10),
        )
        with client, RssSampler(pid, 0.05) as sampler:
            started = time.perf_counter()
            resp = client.post("/v1/videos", content=body(size, progress, task, marks), headers=headers)
            done = time.perf_counter()
    try:
        code = resp.json().get("code")
    except ValueError:
        code = None
    total_s = done - started
    sent_s = marks.get("sent", done) - started
    row = {
        "bytes": size,
        "status": resp.status_code,
        "code": code,
        "seconds_to_response": round(total_s, 3),
        "seconds_body_sent": round(sent_s, 3),
        "seconds_after_body": round(total_s - sent_s, 3),
        "mb_per_s": round(size / total_s / 1e6, 1),
        "mb_per_s_body": round(size / sent_s / 1e6, 1),
        "rss_idle_mib": mib(idle_kib),
        "rss_peak_sampled_mib": mib(sampler.peak_kib),
        "vm_hwm_mib": mib(proc_status_kib(pid, "VmHWM")),
        "vm_hwm_reset_before": reset,
        "samples": len(sampler.samples),
        # The RSS trace, thinned to at most ~200 points for plotting.
        "rss_trace_mib": [[round(t, 2), mib(k)] for t, k in sampler.samples[:: max(1, len(sampler.samples) // 200)]],
    }
    ok = resp.status_code == 422 and code == "not_media"
    console.log(
        f"{size // MiB} MiB -> {resp.status_code} {code}: {row['mb_per_s']} MB/s to response "
        f"({row['mb_per_s_body']} MB/s body), peak RSS {row['rss_peak_sampled_mib']} MiB, VmHWM {row['vm_hwm_mib']} MiB"
        + ("" if ok else "  [red](expected 422 not_media)[/]")
    )
    return row


def run() -> dict:
    env = {"VIDMESH_MAX_UPLOAD_BYTES": str(2 * GiB), "VIDMESH_TRANSCODER_PROCS": "1"}
    with running_mesh(env, label="mesh for upload") as mesh:
        pid = service_pid(mesh, "gateway")
        runs = [upload_once(mesh, pid, size) for size in SIZES]
    small, big = runs
    peak = max(max(r["vm_hwm_mib"] or 0, r["rss_peak_sampled_mib"] or 0) for r in runs)
    growth = (big["rss_peak_sampled_mib"] or 0) - (small["rss_peak_sampled_mib"] or 0)
    return {
        "gateway_pid": pid,
        "runs": runs,
        "summary": {
            "mb_per_s_1gib": big["mb_per_s"],
            "peak_rss_mib": peak,
            "peak_growth_256mib_to_1gib_mib": round(growth, 1),
            "target_peak_under_mb": TARGET_PEAK_BYTES / 1e6,
            "met_peak": peak * MiB < TARGET_PEAK_BYTES,
            "met_flat": growth * 1024 <= FLAT_SLACK_KIB,
            "all_refused_as_expected": all(r["status"] == 422 and r["code"] == "not_media" for r in runs),
        },
    }


def table(result: dict) -> Table:
    t = figures_table(
        "upload: body streamed through the gateway (refused at the end as not_media)",
        ("body", "response", "to response", "body sent", "after body", "RSS idle", "RSS peak", "VmHWM"),
    )
    for r in result["runs"]:
        t.add_row(
            f"{r['bytes'] // MiB} MiB",
            f"{r['status']} {r['code']}",
            f"{r['mb_per_s']} MB/s ({r['seconds_to_response']} s)",
            f"{r['mb_per_s_body']} MB/s",
            f"{r['seconds_after_body']} s",
            f"{r['rss_idle_mib']} MiB",
            f"{r['rss_peak_sampled_mib']} MiB",
            f"{r['vm_hwm_mib']} MiB",
        )
    s = result["summary"]
    t.caption = (
        f"peak {s['peak_rss_mib']} MiB (target < 200 MB: {verdict(s['met_peak'])}); "
        f"growth 256 MiB -> 1 GiB: {s['peak_growth_256mib_to_1gib_mib']} MiB (flat: {verdict(s['met_flat'])})"
    )
    return t

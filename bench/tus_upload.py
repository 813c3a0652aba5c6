"""tus_upload: a 1 GiB upload through tus in 8 MiB PATCHes against one POST of the same body,
in one run against the same gateway process: throughput to the answer naming the video,
and the gateway's peak RSS.

The body is a real video (a short faststart clip followed by a 1 GiB `free` box), so both
paths end the same way, probed from the two 8 MiB ends and accepted, and the figure is the
streaming path end to end. POST runs first, then tus (the gateway's VmHWM is reset before
each). Target: tus at least 80% of POST's throughput, peak RSS under 200 MB.

    python -m bench.tus_upload [--size-mib 1024] [--patch-mib 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx

from services.tusclient import _pieces

from .common import GiB, MiB, RssSampler, console, mib, proc_status_kib, reset_peak_rss, running_mesh, service_pid

NAME = "tus_upload"
TARGET_RATIO = 0.8
TARGET_PEAK_BYTES = 200_000_000
TIMEOUT_S = 600
TUS = {"Tus-Resumable": "1.0.0"}


def post_once(client: httpx.Client, path: Path, size: int) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    resp = client.post(
        "/v1/videos",
        content=_pieces(path, 0, size, piece=1 * MiB),
        headers={"Content-Type": "video/mp4", "Content-Length": str(size), "X-Filename": path.name},
    )
    return time.perf_counter() - started, resp


def tus_once(client: httpx.Client, path: Path, size: int, patch_bytes: int) -> tuple[float, httpx.Response, int]:
    started = time.perf_counter()
    created = client.post("/v1/uploads", headers={**TUS, "Upload-Length": str(size)})
    created.raise_for_status()
    url = created.headers["location"]
    offset, patches, resp = 0, 0, created
    while offset < size:
        n = min(patch_bytes, size - offset)
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(n)
        resp = client.patch(
            url,
            content=data,
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        if resp.status_code != 204:
            break
        offset = int(resp.headers["upload-offset"])
        patches += 1
    return time.perf_counter() - started, resp, patches


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (a load-independent cost of each path)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nats_pid(mesh) -> int:
    import re

    for line in mesh.lines:
        if m := re.match(r"^nats\s*\| started pid=(\d+)", line):
            return int(m.group(1))
    raise RuntimeError("no nats-server pid in the mesh output")


def measure(mesh, pid: int, label: str, fn) -> dict:
    reset = reset_peak_rss(pid)
    idle = proc_status_kib(pid, "VmRSS")
    server = nats_pid(mesh)
    cpu0, ncpu0 = cpu_seconds(pid), cpu_seconds(server)
    with RssSampler(pid, 0.05) as sampler:
        out = fn()
    cpu1, ncpu1 = cpu_seconds(pid), cpu_seconds(server)
    seconds, resp = out[0], out[1]
    row = {
        "path": label,
        "status": resp.status_code,
        "video_id": resp.headers.get("vidmesh-video-id")
        or (resp.json().get("id") if resp.status_code == 202 else None),
        "seconds": round(seconds, 3),
        "rss_idle_mib": mib(idle),
        "rss_peak_sampled_mib": mib(sampler.peak_kib),
        "vm_hwm_mib": mib(proc_status_kib(pid, "VmHWM")),
        "vm_hwm_reset_before": reset,
        "gateway_cpu_s": round(cpu1 - cpu0, 2),
        "nats_cpu_s": round(ncpu1 - ncpu0, 2),
    }
    if len(out) > 2:
        row["patches"] = out[2]
    return row


def run(size: int = 1 * GiB, patch_bytes: int = 8 * MiB) -> dict:
    from tests.uploads import make_padded_clip

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-tus-") as tmp:
        path = Path(make_padded_clip(Path(tmp) / "padded.mp4", size))
        env = {"VIDMESH_MAX_UPLOAD_BYTES": str(2 * GiB), "VIDMESH_TRANSCODER_PROCS": "1"}
        with running_mesh(env, label="mesh for tus_upload") as mesh:
            pid = service_pid(mesh, "gateway")
            client = httpx.Client(
                base_url=mesh.url,
                headers={"Authorization": f"Bearer {mesh.KEYS['alice']}"},
                timeout=httpx.Timeout(TIMEOUT_S, connect=10),
            )
            with client:
                post = measure(mesh, pid, "POST /v1/videos", lambda: post_once(client, path, size))
                tus = measure(
                    mesh,
                    pid,
                    f"tus, {patch_bytes // MiB} MiB PATCHes",
                    lambda: tus_once(client, path, size, patch_bytes),
                )
    for row in (post, tus):
        row["mb_per_s"] = round(size / row["seconds"] / 1e6, 1)
        console.log(
            f"{row['path']}: {row['status']} in {row['seconds']} s = {row['mb_per_s']} MB/s, "
            f"peak RSS {row['rss_peak_sampled_mib']} MiB (VmHWM {row['vm_hwm_mib']} MiB), "
            f"CPU: gateway {row['gateway_cpu_s']} s, nats-server {row['nats_cpu_s']} s"
        )
    ratio = tus["mb_per_s"] / post["mb_per_s"]
    peak = max(max(r["vm_hwm_mib"] or 0, r["rss_peak_sampled_mib"] or 0) for r in (post, tus))
    summary = {
        "bytes": size,
        "patch_bytes": patch_bytes,
        "tus_to_post": round(ratio, 3),
        "met_ratio": ratio >= TARGET_RATIO,
        "peak_rss_mib": peak,
        "met_peak": peak * MiB < TARGET_PEAK_BYTES,
        "both_accepted": post["status"] == 202 and tus["status"] == 204,
        "load_average": os.getloadavg(),
    }
    console.log(f"tus/POST = {summary['tus_to_post']} (target >= {TARGET_RATIO}); peak RSS {peak} MiB")
    return {"runs": [post, tus], "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tus_upload")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--patch-mib", type=int, default=8)
    args = parser.parse_args(argv)
    result = run(args.size_mib * MiB, args.patch_mib * MiB)
    from .common import write_result

    print(write_result(NAME, result))
    s = result["summary"]
    return 0 if s["both_accepted"] and s["met_ratio"] and s["met_peak"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

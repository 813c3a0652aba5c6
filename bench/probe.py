"""probe: the pipeline's probe of a large stored upload, two ends vs the whole object.

A 1 GiB video (raw 1080p RGB frames in a MOV with its index at the end, as a camera writes
it: no encoder time spent making it) is stored once in the object store of a real
nats-server; then the pipeline's probe endpoint function runs on it three times as it
runs now (`VIDMESH_PROBE_WINDOW_MB=8`: first and last 8 MiB in a sparse file) and three
times as it ran before (the whole object fetched: a window larger than half the upload),
interleaved, in the same process. Reported: the median seconds of each and their ratio,
and the bytes each fetched from the store. The same object also measures a Range read of
its last MiB (what a player seeking to the end asks for): through the chunk checkpoints
vs without them (the object's info with its metadata dropped: the scan from chunk one),
and the thumbnailer's first-frame JPEG read through ObjectReader vs from a downloaded copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from prometheus_client import REGISTRY
from rich.table import Table

from .common import GiB, MiB, console, figures_table, median

NAME = "probe"
SIZE = 1 * GiB
ROUNDS = 3
MODES = {"two ends (8 MiB each)": "8", "whole upload (before)": str(2 * SIZE // MiB)}


def make_video(path: Path, size: int) -> int:
    """Raw 1080p RGB frames (6 MiB each) in a MOV, index at the end; returns the file size."""
    width, height = 1920, 1080
    frame_bytes = width * height * 3
    rng = np.random.default_rng(3)
    picture = rng.integers(16, 235, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for i in range(max(1, size // frame_bytes)):
            frame = av.VideoFrame.from_ndarray(np.roll(picture, i, axis=1), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.stat().st_size


def _fetched() -> float:
    return REGISTRY.get_sample_value("vidmesh_media_bytes_total", {"direction": "out"}) or 0.0


async def measure(url: str, video: Path, tmp: str) -> dict:
    from services import mesh, provision
    from services.pipeline import service as pipeline
    from services.pipeline.settings import PipelineSettings
    from shared.bus import Bus
    from shared.contracts import ProbeSource

    buses = {}
    for mode, window in MODES.items():
        settings = PipelineSettings.load(
            {
                "NATS_URL": url,
                "VIDMESH_PROBE_WINDOW_MB": window,
                "VIDMESH_TMP_DIR": tmp,
            }
        )
        buses[mode] = await Bus.connect(settings, "bench")
    try:
        first = next(iter(buses.values()))
        await provision.ensure(first.js, first.settings, mesh.consumers())
        t0 = time.perf_counter()
        await first.media.put_file("bench/probe/source", video)
        console.log(f"stored {video.stat().st_size / MiB:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        runs = {mode: [] for mode in MODES}
        for _ in range(ROUNDS):
            for mode, bus in buses.items():
                before, t0 = _fetched(), time.perf_counter()
                probed = await pipeline.probe_source(
                    ProbeSource(tenant="bench", video_id="v", object="bench/probe/source"), bus
                )
                seconds = time.perf_counter() - t0
                if probed.error is not None:
                    raise RuntimeError(f"{mode}: the probe refused the video: {probed.error}")
                runs[mode].append({"seconds": round(seconds, 3), "fetched_mib": round((_fetched() - before) / MiB, 1)})
                console.log(f"{mode}: {seconds:.2f} s, fetched {runs[mode][-1]['fetched_mib']} MiB")
        info = await first.media.info("bench/probe/source")
        reads = {
            "Range: last MiB, checkpoints": info,
            "Range: last MiB, scan (before)": dataclasses.replace(info, metadata=None),
        }
        runs.update({label: [] for label in reads})
        for _ in range(ROUNDS):
            for label, obj in reads.items():
                before, t0 = _fetched(), time.perf_counter()
                got = sum([len(p) async for p in first.media.read(obj, info.size - MiB, info.size - 1)])
                assert got == MiB, got
                runs[label].append(
                    {
                        "seconds": round(time.perf_counter() - t0, 4),
                        "fetched_mib": round((_fetched() - before) / MiB, 1),
                    }
                )
        thumbnails = {"thumbnail: read from the store": True, "thumbnail: downloaded first (before)": False}
        runs.update({label: [] for label in thumbnails})
        for _ in range(ROUNDS):
            for label, direct in thumbnails.items():
                before, t0 = _fetched(), time.perf_counter()
                await thumbnail(first, info, Path(tmp), direct)
                runs[label].append(
                    {
                        "seconds": round(time.perf_counter() - t0, 3),
                        "fetched_mib": round((_fetched() - before) / MiB, 1),
                    }
                )
    finally:
        for bus in buses.values():
            await bus.close()
    return runs


async def thumbnail(bus, info, tmp: Path, direct: bool) -> None:
    from services.thumbnailer.snapshot import first_frame_jpeg
    from shared.objects import ObjectReader

    if direct:  # what the thumbnailer does now
        source = ObjectReader(bus.media, info, asyncio.get_running_loop())
    else:
        source = str(tmp / "downloaded")
        await bus.media.download(info.name, source)
    await asyncio.to_thread(first_frame_jpeg, source, str(tmp / "thumbnail.jpg"))
    if not direct:
        os.unlink(source)


def run() -> dict:
    from tests.conftest import NatsServer

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-probe-") as tmp:
        video = Path(tmp) / "camera.mov"
        with console.status("writing a 1 GiB video"):
            size = make_video(video, SIZE)
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            runs = asyncio.run(measure(server.url, video, tmp))
        finally:
            server.stop()
    medians = {m: median([r["seconds"] for r in rs]) for m, rs in runs.items()}
    now, before, seek, scan, direct, downloaded = medians.values()
    return {
        "video_bytes": size,
        "runs": runs,
        "summary": {
            "median_s": medians,
            "ratio_two_ends_to_whole": round(now / before, 3),
            "ratio_range_checkpoints_to_scan": round(seek / scan, 4),
            "ratio_thumbnail_direct_to_downloaded": round(direct / downloaded, 3),
        },
    }


def table(result: dict) -> Table:
    t = figures_table(
        f"probe: a {result['video_bytes'] / MiB:.0f} MiB stored upload (index at the end)",
        ("fetch", "median", "runs", "fetched from the store"),
    )
    for mode, runs in result["runs"].items():
        t.add_row(
            mode,
            f"{median([r['seconds'] for r in runs]):.3f} s",
            ", ".join(f"{r['seconds']:.3f}" for r in runs),
            f"{runs[-1]['fetched_mib']} MiB",
        )
    s = result["summary"]
    t.caption = (
        f"probe, two ends / whole upload: {s['ratio_two_ends_to_whole']}x; "
        f"Range read, checkpoints / scan: {s['ratio_range_checkpoints_to_scan']}x; "
        f"thumbnail, from the store / downloaded: {s['ratio_thumbnail_direct_to_downloaded']}x"
    )
    return t

"""status: one video's status read, over NATS request-reply versus plain HTTP.

(a) `catalog.rpc.get` through shared.bus.Bus.request (what the gateway does for
`GET /v1/videos/{id}`), (b) the catalog's own `GET /internal/videos/{tenant}/{id}` with
httpx.AsyncClient. Both end in the same KV read inside the catalog, so the difference is
the transport. Same video, same mesh, same client process, at 1 and 64 requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import httpx
from rich.table import Table

from .common import console, figures_table, median, percentile, running_mesh, service_port, verdict

NAME = "status"
CONCURRENCY = (1, 64)
MAX_REQUESTS = 3000  # per configuration...
MAX_SECONDS = 10.0  # ...or this long, whichever comes first
REFERENCE_REQUESTS = 1500  # the transport floors below: one round
WARMUP = 200
ROUNDS = 2  # A/B alternated; the better round of each configuration is reported
TENANT = "alice"


async def measure(call, concurrency: int, count: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal issued, errors
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 3) if latencies else None,
    }


def make_video(mesh) -> str:
    """Upload a small clip and wait until it is ready: a real, complete status record."""
    from tests.clips import make_clip
    from tests.conftest import wait_for

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "small.mp4", width=320, height=240, seconds=1.0)
        with mesh.client(TENANT) as client:
            resp = client.post("/v1/videos", content=Path(clip).read_bytes(), headers={"Content-Type": "video/mp4"})
            resp.raise_for_status()
            video_id = resp.json()["id"]
            wait_for(lambda: client.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 120, 0.1, "video ready")
    return video_id


async def compare(mesh, video_id: str) -> dict:
    from shared import topology
    from shared.bus import Bus
    from shared.contracts import GetVideo, Video
    from shared.settings import Settings

    bus = await Bus.connect(Settings.load({}), "bench", url=mesh.nats_url)
    port = service_port(mesh, "catalog")
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        limits=httpx.Limits(max_connections=max(CONCURRENCY), max_keepalive_connections=max(CONCURRENCY)),
        timeout=10,
    )
    request = GetVideo(tenant=TENANT, video_id=video_id)
    path = f"/internal/videos/{TENANT}/{video_id}"

    async def via_nats():
        video = await bus.request(topology.RPC_CATALOG_GET, request, Video)
        assert video.id == video_id

    async def via_http():
        resp = await http.get(path)
        resp.raise_for_status()

    # Floors, for reading the comparison: the HTTP stack alone (a route that touches no
    # KV), and the catalog's own work alone (the KV get it does for every request).
    kv = await bus.kv(topology.KV_VIDEOS)
    key = topology.state_key(TENANT, video_id)

    async def http_floor():
        (await http.get("/healthz")).raise_for_status()

    async def kv_floor():
        await kv.get(key)

    calls = {"nats": via_nats, "http": via_http}
    references = {"http /healthz (no KV read)": http_floor, "kv get from the client": kv_floor}
    rounds: list[dict] = []
    floors: list[dict] = []
    try:
        for call in calls.values():  # warm both paths (connections, caches)
            await measure(call, 8, WARMUP, MAX_SECONDS)
        for n in range(ROUNDS):
            for concurrency in CONCURRENCY:
                order = list(calls) if n % 2 == 0 else list(reversed(calls))
                for name in order:
                    row = await measure(calls[name], concurrency, MAX_REQUESTS, MAX_SECONDS)
                    row.update(path=name, round=n + 1)
                    console.log(
                        f"round {n + 1} {name:<4} c={concurrency:<3} {row['rps']:>8} req/s  "
                        f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  errors {row['errors']}"
                    )
                    rounds.append(row)
        for name, call in references.items():
            for concurrency in CONCURRENCY:
                row = await measure(call, concurrency, REFERENCE_REQUESTS, MAX_SECONDS)
                row.update(path=name)
                console.log(f"reference {name} c={concurrency}: {row['rps']} req/s p50 {row['p50_ms']} ms")
                floors.append(row)
    finally:
        await http.aclose()
        await bus.close()
    return {"catalog_http_port": port, "rounds": rounds, "references": floors}


def run() -> dict:
    logging.getLogger("vidmesh.bus").setLevel(logging.ERROR)  # "disconnected" on our own close
    with running_mesh({"VIDMESH_TRANSCODER_PROCS": "1"}, label="mesh for status") as mesh:
        video_id = make_video(mesh)
        measured = asyncio.run(compare(mesh, video_id))
    best = {}
    for row in measured["rounds"]:
        key = (row["path"], row["concurrency"])
        if key not in best or row["rps"] > best[key]["rps"]:
            best[key] = row
    configs = []
    for c in CONCURRENCY:
        nats, http = best[("nats", c)], best[("http", c)]
        ratio = round(nats["rps"] / http["rps"], 2) if http["rps"] else None
        configs.append(
            {
                "concurrency": c,
                "nats": nats,
                "http": http,
                "ratio_nats_over_http": ratio,
                "met": ratio is not None and ratio >= 1.0,
            }
        )
    return {
        "video_id": video_id,
        "max_requests": MAX_REQUESTS,
        "max_seconds": MAX_SECONDS,
        **measured,
        "best": configs,
        "summary": {
            "met": all(c["met"] for c in configs),
            "ratio_c1": configs[0]["ratio_nats_over_http"],
            "ratio_c64": configs[-1]["ratio_nats_over_http"],
            "median_ratio": median([c["ratio_nats_over_http"] for c in configs]),
        },
    }


def table(result: dict) -> Table:
    t = figures_table(
        "status: GET one video, NATS request-reply vs HTTP (best of rounds)",
        ("in flight", "NATS req/s", "NATS p50 / p99", "HTTP req/s", "HTTP p50 / p99", "NATS/HTTP", "target >= 1"),
    )
    for c in result["best"]:
        n, h = c["nats"], c["http"]
        t.add_row(
            str(c["concurrency"]),
            f"{n['rps']:.0f}",
            f"{n['p50_ms']:.2f} / {n['p99_ms']:.2f} ms",
            f"{h['rps']:.0f}",
            f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} ms",
            f"{c['ratio_nats_over_http']:.2f}x",
            verdict(c["met"]),
        )
    floors = {(r["path"], r["concurrency"]): r for r in result.get("references", [])}
    if floors:
        parts = [f"{name} c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms" for (name, c), r in floors.items()]
        t.caption = "floors (same client): " + "; ".join(parts)
    return t

"""Prometheus metrics of every service move as an upload goes through the mesh."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clips import make_clip
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[tuple, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


def ports(mesh) -> dict[str, int]:
    found = {}
    for line in mesh.lines:
        if m := re.match(r"(\w+)(?:-\d+)?\s+\| started pid=\d+ http=:(\d+)", line):
            found.setdefault(m.group(1), int(m.group(2)))
    return found


def test_metrics_move_with_an_upload(mesh, tmp_path):
    clip = tmp_path / "m.mp4"
    make_clip(str(clip), width=320, height=240, seconds=1.0)
    p = ports(mesh)
    before = {name: scrape(port) for name, port in p.items()}
    with mesh.client() as c:
        video_id = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")

    def moved(name, metric, **labels):
        return total(scrape(p[name]), metric, **labels) > total(before[name], metric, **labels)

    # HTTP latency histogram at the gateway, by route
    assert moved("gateway", "vidmesh_http_request_seconds_count", route="/v1/videos", method="POST", status="202")
    # request-reply latency at the services that answer
    assert moved("pipeline", "vidmesh_rpc_server_seconds_count", subject="pipeline.rpc.probe")
    assert moved("catalog", "vidmesh_rpc_server_seconds_count", subject="catalog.rpc.get")
    # bytes in and out of the object store
    assert moved("gateway", "vidmesh_media_bytes_total", direction="in")
    assert moved("pipeline", "vidmesh_media_bytes_total", direction="out")
    # tasks processed and their duration, by consumer; the catalog projected the events
    wait_for(
        lambda: moved("thumbnailer", "vidmesh_messages_total", consumer="thumbnailer", outcome="ok"),
        10,
        0.2,
        "thumbnailer",
    )
    assert moved("thumbnailer", "vidmesh_message_seconds_count", consumer="thumbnailer")
    assert moved("catalog", "vidmesh_messages_total", consumer="catalog", outcome="ok")
    # consumer lag per durable consumer is reported (and is back to zero once idle)
    wait_for(
        lambda: ("vidmesh_consumer_lag", (("consumer", "pipeline"),)) in scrape(p["pipeline"]), 15, 0.5, "lag gauge"
    )
    wait_for(lambda: total(scrape(p["pipeline"]), "vidmesh_consumer_lag", consumer="pipeline") == 0, 15, 0.5, "lag 0")


def test_every_service_answers_srv_ping(mesh):
    """`nats micro ls` lists the whole mesh: each service answers $SRV.PING."""
    import asyncio

    import nats

    from services.mesh import names

    SERVICES = names()

    async def ping():
        nc = await nats.connect(mesh.nats_url)
        names = set()
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SRV.PING", b"", reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    return names
                names.add(__import__("json").loads(msg.data)["name"])
        finally:
            await nc.close()

    assert {f"vidmesh-{s}" for s in SERVICES} <= asyncio.run(ping())

"""Logs and metrics as events, alerts, and the feedback loop: the monitor's load state
drives the gateway's 429, an alert fires when a worker kind is stopped and lag grows, and
clears when it returns."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats
import pytest

from services.up import free_port
from shared import contracts
from tests.clips import make_clip
from tests.conftest import Mesh, running_mesh, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def watched_mesh():
    env = {
        "VIDMESH_TRANSCODER_PROCS": "0",  # the worker kind starts stopped
        "VIDMESH_MAX_BACKLOG": "1",
        "VIDMESH_ALERT_LAG": "0",
        "VIDMESH_ALERT_SILENT_S": "4",
        "VIDMESH_MONITOR_INTERVAL_S": "0.5",
        "VIDMESH_METRICS_INTERVAL_S": "1",
        "OTEL_SDK_DISABLED": "false",
    }
    with running_mesh("vidmesh-monitor-", env) as m:
        yield m


def ops_messages(mesh: Mesh, subject: str) -> list[bytes]:
    async def read():
        nc = await nats.connect(mesh.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(subject, stream="OPS", ordered_consumer=True)
            found = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except Exception:
                    return found
                found.append(msg.data)
        finally:
            await nc.close()

    return asyncio.run(read())


def firing(client, rule: str, subject: str):
    return [a for a in client.get("/v1/alerts").json()["alerts"] if a["rule"] == rule and a["subject"] == subject]


def test_lag_alert_and_backpressure_follow_the_monitor(watched_mesh, tmp_path):
    clip = tmp_path / "480.mp4"
    make_clip(str(clip), width=854, height=480, seconds=0.5)  # two transcode tasks: its chunk and its audio
    tiny = tmp_path / "tiny.mp4"
    make_clip(str(tiny), width=320, height=240, seconds=0.5)
    with watched_mesh.client() as c:
        assert c.get("/v1/alerts").status_code == 200
        assert firing(c, "consumer_lag", "transcoder") == []
        video_id = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]

        # no transcoder runs: the lag grows and the monitor says so
        alert = wait_for(lambda: firing(c, "consumer_lag", "transcoder"), 20, 0.2, "the lag alert")[0]
        assert alert["value"] >= 2 and alert["severity"] == "warning"
        load = c.get("/v1/alerts").json()["load"]
        assert load["backlog"] >= 2 and load["overloaded"] is True

        # ... and the gateway sheds load on the monitor's word
        def refused():
            r = c.post("/v1/videos", content=tiny.read_bytes(), headers={"Content-Type": "video/mp4"})
            return r if r.status_code == 429 else None

        r = wait_for(refused, 10, 0.3, "a 429")
        assert r.json()["code"] == "overloaded" and r.headers["vidmesh-load-source"] == "monitor"

        # the worker kind comes back: the backlog drains, the alert clears, uploads flow again
        env = {
            **watched_mesh.env,
            "NATS_URL": f"nats://127.0.0.1:{watched_mesh.nats_port}",
            "VIDMESH_HTTP_PORT": str(free_port()),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "services", "run", "transcoder"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")
            wait_for(lambda: not firing(c, "consumer_lag", "transcoder"), 20, 0.2, "the lag alert to clear")
            accepted = lambda: c.post("/v1/videos", content=tiny.read_bytes(), headers={"Content-Type": "video/mp4"})  # noqa: E731
            wait_for(lambda: accepted().status_code == 202, 20, 0.3, "uploads accepted again")
        finally:
            worker.terminate()
            worker.wait(30)

        # a service that goes quiet is noticed too
        wait_for(lambda: firing(c, "service_silent", "transcoder"), 20, 0.3, "the silence alert")

    # alert changes are events on the bus, and so are log records and metric samples
    changes = [
        contracts.decoder(contracts.AlertChanged).decode(m)
        for m in ops_messages(watched_mesh, "monitor.evt.alert.consumer_lag")
    ]
    states = [(ch.alert.subject, ch.state) for ch in changes]
    assert ("transcoder", "firing") in states and ("transcoder", "resolved") in states
    assert states.index(("transcoder", "firing")) < states.index(("transcoder", "resolved"))
    logs = [contracts.decoder(contracts.LogRecord).decode(m) for m in ops_messages(watched_mesh, "logs.evt.monitor")]
    assert any(rec.level == "WARNING" and "consumer_lag" in rec.message for rec in logs)
    samples = [
        contracts.decoder(contracts.MetricSample).decode(m) for m in ops_messages(watched_mesh, "metrics.evt.catalog")
    ]
    assert samples and samples[-1].messages.get("catalog", {}).get("ok", 0) > 0


def test_log_level_on_demand(watched_mesh):
    """`ops.cmd.log_level` turns a service's log events up (any level on demand)."""

    async def ask():
        nc = await nats.connect(watched_mesh.nats_url)
        try:
            reply = await nc.request("ops.cmd.log_level", b'{"service":"catalog","level":"DEBUG"}', timeout=5)
            return reply.data
        finally:
            await nc.close()

    assert b'"level":"DEBUG"' in asyncio.run(ask())

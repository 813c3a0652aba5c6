"""Webhooks through `vidmesh up`: registered over the API, delivered by the notifier to a
real HTTP receiver on 127.0.0.1, signed, retried through JetStream, dead-lettered, and
refused for private addresses without VIDMESH_WEBHOOK_ALLOW_PRIVATE."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.notifier.signature import verify
from shared import topology
from tests.clips import make_clip
from tests.conftest import Mesh, js_run, nats_servers, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BACKOFF_S = 0.3
MAX_ATTEMPTS = 3


class Receiver:
    """An HTTP receiver on 127.0.0.1: /ok answers 200, /flaky 500 twice then 200, /down 503."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    seen = sum(r["path"] == self.path for r in receiver.requests)
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.time()}
                    )
                status = {"/ok": 200, "/flaky": 500 if seen < 2 else 200, "/down": 503}.get(self.path, 404)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooks_mesh():
    env = {
        "VIDMESH_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver is on 127.0.0.1
        "VIDMESH_WEBHOOK_BACKOFF_S": str(BACKOFF_S),
        "VIDMESH_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "VIDMESH_TRANSCODER_PROCS": "1",
    }
    with tempfile.TemporaryDirectory(prefix="vidmesh-e2e-hooks-") as tmp:
        m = Mesh(Path(tmp), env).start()
        yield m
        assert m.stop() == 0, "\n".join(m.lines[-40:])


@pytest.fixture(scope="module")
def delivered(hooks_mesh, receiver, tmp_path_factory):
    """Three webhooks (a good, a flaky and a broken receiver), then one upload that becomes
    ready: every test below follows one of the three deliveries."""
    clip = make_clip(str(tmp_path_factory.mktemp("clips") / "tiny.mp4"), width=160, height=120, seconds=0.5)
    hooks = {}
    with hooks_mesh.client() as c:
        for path, events in (
            ("/ok", ["video.ready", "video.deleted"]),
            ("/flaky", ["video.ready"]),
            ("/down", ["video.ready"]),
        ):
            r = c.post("/v1/webhooks", json={"url": receiver.url + path, "events": events, "description": path})
            assert r.status_code == 201, r.text
            hooks[path] = r.json()
        r = c.post("/v1/videos", content=Path(clip).read_bytes(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 202, r.text
        video_id = r.json()["id"]
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "the video to be ready")
    return {"hooks": hooks, "video_id": video_id}


def _deliveries(mesh, hook_id: str) -> list[dict]:
    with mesh.client() as c:
        r = c.get(f"/v1/webhooks/{hook_id}/deliveries")
        assert r.status_code == 200, r.text
        return r.json()["items"]


def test_webhooks_are_created_with_a_secret_shown_once_listed_and_deleted(hooks_mesh, delivered):
    ok = delivered["hooks"]["/ok"]
    assert ok["id"].startswith("wh_") and ok["secret"].startswith("whsec_")
    assert ok["events"] == ["video.ready", "video.deleted"]
    with hooks_mesh.client() as c:
        listed = c.get("/v1/webhooks").json()["items"]
        assert {h["id"] for h in listed} >= {h["id"] for h in delivered["hooks"].values()}
        assert all("secret" not in h for h in listed)
        got = c.get(f"/v1/webhooks/{ok['id']}")
        assert got.status_code == 200 and "secret" not in got.json()
        # another tenant sees none of them
        with hooks_mesh.client("bob") as other:
            assert other.get("/v1/webhooks").json()["items"] == []
            assert other.get(f"/v1/webhooks/{ok['id']}").status_code == 404
        extra = c.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/gone"}).json()
        assert extra["events"] == ["video.ready", "video.failed", "video.deleted"]  # default: all
        assert c.delete(f"/v1/webhooks/{extra['id']}").status_code == 204
        assert c.get(f"/v1/webhooks/{extra['id']}").status_code == 404
        assert c.get(f"/v1/webhooks/{extra['id']}/deliveries").json()["code"] == "not_found"


def test_secrets_are_sealed_at_rest(hooks_mesh, delivered):
    """Whoever reads the `webhooks` bucket (a NATS user, a backup) finds no secret in it."""

    async def records(js):
        kv = await js.key_value(topology.KV_WEBHOOKS)
        return [(await kv.get(key)).value for key in await kv.keys()]

    stored = js_run(nats_servers(hooks_mesh), records)
    assert len(stored) >= len(delivered["hooks"])
    for hook in delivered["hooks"].values():
        secret = hook["secret"].encode()
        assert not [value for value in stored if secret in value or secret[6:] in value]
    assert all(json.loads(value)["sealed_secret"].startswith("v1.") for value in stored)


def test_a_receiver_gets_video_ready_with_a_valid_signature(hooks_mesh, receiver, delivered):
    video_id, hook = delivered["video_id"], delivered["hooks"]["/ok"]
    got = wait_for(lambda: receiver.got("/ok"), 20, what="the video.ready delivery")
    request = got[0]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert verify(hook["secret"], request["body"], headers["vidmesh-signature"])
    body = json.loads(request["body"])
    assert body["type"] == "video.ready" and body["id"] == headers["vidmesh-event-id"] == f"evt_{video_id}_ready"
    video = body["data"]["video"]
    assert video["id"] == video_id and video["status"] == "ready" and video["renditions"]
    assert headers["content-type"] == "application/json" and headers["vidmesh-delivery-attempt"] == "1"
    items = wait_for(lambda: [d for d in _deliveries(hooks_mesh, hook["id"]) if d["status"] == "succeeded"], 10)
    assert items[0]["event_id"] == body["id"] and items[0]["attempts"][0]["status_code"] == 200

    # deleting the video is an event this webhook wants too
    with hooks_mesh.client() as c:
        assert c.delete(f"/v1/videos/{video_id}").status_code == 200
    deleted = wait_for(lambda: [r for r in receiver.got("/ok") if b'"video.deleted"' in r["body"]], 20)
    assert json.loads(deleted[0]["body"])["data"]["video"]["status"] == "deleted"
    # /flaky did not ask for video.deleted
    assert all(b'"video.deleted"' not in r["body"] for r in receiver.got("/flaky"))


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try(hooks_mesh, receiver, delivered):
    hook = delivered["hooks"]["/flaky"]
    got = wait_for(lambda: receiver.got("/flaky") if len(receiver.got("/flaky")) >= 3 else None, 30, what="3 tries")
    bodies = {r["body"] for r in got[:3]}
    assert len(bodies) == 1  # the same event (same id) every time, signed anew each time
    for r in got[:3]:
        assert verify(hook["secret"], r["body"], r["headers"]["Vidmesh-Signature"])
    assert [r["headers"]["Vidmesh-Delivery-Attempt"] for r in got[:3]] == ["1", "2", "3"]
    first, second = got[1]["at"] - got[0]["at"], got[2]["at"] - got[1]["at"]
    assert first >= BACKOFF_S * 0.8 and second >= 2 * BACKOFF_S * 0.8, (first, second)  # growing delays

    def succeeded():
        items = _deliveries(hooks_mesh, hook["id"])
        return items if items and items[0]["status"] == "succeeded" else None

    delivery = wait_for(succeeded, 10, what="the delivery record")[0]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]

    async def queued(js):
        return (await js.stream_info(topology.TASKS_WEBHOOK)).state.messages

    # once the delivery queue is empty nothing more can arrive
    wait_for(lambda: js_run(nats_servers(hooks_mesh), queued) == 0, 20, 0.2, "the webhook queue to drain")
    assert len(receiver.got("/flaky")) == 3


def test_a_receiver_that_always_fails_ends_in_the_dead_letter_stream(hooks_mesh, receiver, delivered):
    hook = delivered["hooks"]["/down"]

    def dead():
        items = _deliveries(hooks_mesh, hook["id"])
        return items[0] if items and items[0]["status"] == "dead" else None

    delivery = wait_for(dead, 30, what="the delivery to be given up")
    assert [a["status_code"] for a in delivery["attempts"]] == [503] * MAX_ATTEMPTS
    assert len(receiver.got("/down")) == MAX_ATTEMPTS

    async def letter(js):
        return await js.get_last_msg(
            topology.DEADLETTER, topology.dead_letter_subject(topology.TASKS_WEBHOOK, "notifier")
        )

    msg = js_run(nats_servers(hooks_mesh), letter)
    assert msg.headers["Vidmesh-Dead-Reason"].startswith("retries_exhausted")
    task = json.loads(msg.data)
    assert task["webhook_id"] == hook["id"] and task["event_type"] == "video.ready"


def test_a_private_address_is_refused_without_the_opt_in(mesh):
    """The session mesh runs without VIDMESH_WEBHOOK_ALLOW_PRIVATE."""
    with mesh.client() as c:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest",
            "http://[::1]/",
        ):
            r = c.post("/v1/webhooks", json={"url": url})
            assert r.status_code == 422 and r.json()["code"] == "private_address", (url, r.text)
        assert c.get("/v1/webhooks").json()["items"] == []
        bad = c.post("/v1/webhooks", json={"url": "ftp://example.com/x"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_url"
        typo = c.post("/v1/webhooks", json={"url": "https://example.com/x", "events": ["video.readdy"]})
        assert typo.status_code == 400 and typo.json()["code"] == "invalid_request"
        assert c.post("/v1/webhooks", json={"uri": "https://example.com/x"}).status_code == 400
    with mesh.client() as anonymous:
        anonymous.headers.pop("Authorization")
        assert anonymous.get("/v1/webhooks").status_code == 401

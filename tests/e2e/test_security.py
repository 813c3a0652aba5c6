"""Let no one in where they don't belong, against the real mesh (`vidmesh up`,
NATS auth on: every service is its own least-privilege NATS user).

1. every API route needs a key (401 + WWW-Authenticate); only health, readiness, metrics,
   the API docs and the dashboard's files are open; per-tenant quotas (429/403);
2. another tenant's video, rendition, thumbnail, events, webhook and deliveries are 404 on
   every route, lists and alerts show nothing of theirs, media keys and subjects carry
   the tenant;
3. (NATS permissions: tests/integration/test_permissions.py) the mesh runs without a single
   permission violation;
4. hostile input: header, query, path and body limits, strict JSON, media limits checked
   before decoding (streams, containers), the probe bounded in memory and time.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import pytest

from media.problems import MediaError
from services.gateway.auth import ApiKeys
from services.pipeline.probe import probe_isolated
from tests.clips import make_clip
from tests.conftest import Mesh, js_run, nats_servers, service_pids, wait_for

pytestmark = pytest.mark.e2e

OPEN = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/asyncapi.json",
    "/",
    "/static/app.js",
    "/static/style.css",
)
MEDIA_ROUTES = {
    "/v1/videos/{video_id}/renditions/{name}",
    "/v1/videos/{video_id}/thumbnail",
    "/v1/videos/{video_id}/events",
    "/v1/videos/{video_id}/hls/master.m3u8",
    "/v1/videos/{video_id}/hls/{track}/playlist.m3u8",
    "/v1/videos/{video_id}/hls/{track}/init.mp4",
    "/v1/videos/{video_id}/hls/{track}/{segment}.m4s",
}


# A one-time direct-upload URL: its secret is the credential (no key needed or taken), and a
# made-up one is 404 whatever key comes with it.
CAPABILITY_ROUTES = {"/v1/direct-uploads/{token}"}
TUS = {"Tus-Resumable": "1.0.0"}  # the resumable-upload routes want it on every request


class SecureMesh(Mesh):
    KEYS = {
        "alice": "key-alice-0123456789",
        "bob": "key-bob-0123456789",
        "carol": "key-carol-0123456789",  # at most 1 video processing
        "dave": "key-dave-0123456789",  # a small storage quota
        "erin": "key-erin-0123456789",  # at most 2 videos processing
    }


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("sec-clips")
    return {
        "tiny": Path(make_clip(str(d / "tiny.mp4"), width=320, height=240, seconds=1.0, audio=False)).read_bytes(),
        "long": Path(make_clip(str(d / "long.mp4"), width=640, height=480, seconds=4.0, audio=False)).read_bytes(),
        "with_audio": Path(make_clip(str(d / "audio.mp4"), width=320, height=240, seconds=0.5)).read_bytes(),
        "mkv": Path(
            make_clip(
                str(d / "c.mkv"), width=320, height=240, seconds=0.5, audio=False, codec="mpeg4", container="matroska"
            )
        ).read_bytes(),
    }


@pytest.fixture(scope="module")
def sec(clips):
    env = {
        "VIDMESH_TRANSCODER_PROCS": "1",
        "VIDMESH_QUOTA_MAX_PROCESSING_BY_TENANT": "carol:1,erin:2",
        "VIDMESH_QUOTA_MAX_BYTES_BY_TENANT": f"dave:{len(clips['tiny']) * 3 // 2}",
        "VIDMESH_MAX_STREAMS": "1",  # so a clip with audio (2 streams) is over it
        "VIDMESH_CONTAINERS": "mov,mp4",  # so matroska is not accepted
        "VIDMESH_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    with tempfile.TemporaryDirectory(prefix="vidmesh-sec-") as tmp:
        m = SecureMesh(Path(tmp), env).start()
        yield m
        m.stop()


def upload(client: httpx.Client, data: bytes, **headers) -> httpx.Response:
    return client.post("/v1/videos", content=data, headers={"Content-Type": "video/mp4", **headers})


def wait_status(client: httpx.Client, video_id: str, statuses=("ready", "failed"), timeout=90) -> dict:
    def done():
        body = client.get(f"/v1/videos/{video_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout, 0.2, f"video {video_id} to reach {statuses}")


def routes(mesh) -> list[tuple[str, str]]:
    """(method, path template) of every API route the gateway documents."""
    spec = httpx.get(mesh.url + "/openapi.json", timeout=10).json()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m in ("get", "head", "post", "delete")]


def fill(path: str, **values) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x1"), path)


# --- 1. API keys --------------------------------------------------------------------------------


def test_every_api_route_needs_a_key_and_only_the_open_ones_are_open(sec):
    api = routes(sec)
    documented = {p for _, p in api}
    assert {
        "/v1/videos",
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}/deliveries",
        "/v1/alerts",
        "/v1/tokens",
    } <= documented
    assert all(p.startswith("/v1/") for p in documented), "everything documented is API"
    with httpx.Client(base_url=sec.url, timeout=30) as anon:
        for method, path in api:
            url = fill(path, video_id="01m8zzzzzzzzzzzzzzzzzzzzzz", webhook_id="wh_00", name="240p")
            for auth in (None, "Bearer wrong-key", f"Basic {SecureMesh.KEYS['alice']}", "Bearer"):
                r = anon.request(method, url, headers={"Authorization": auth} if auth else {})
                if path in CAPABILITY_ROUTES:
                    assert r.status_code == 404, (method, path, auth, r.status_code)
                    continue
                assert r.status_code == 401, (method, path, auth, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
                if method != "HEAD":
                    assert r.json()["code"] == "unauthorized"
        for path in OPEN:
            assert anon.get(path).status_code == 200, path


def test_keys_are_held_hashed():
    keys = ApiKeys({"s3cret-key": "alice"})
    assert "s3cret-key" not in repr(keys._digests) and all(len(d) == 32 for d, _ in keys._digests)
    assert keys.tenant_for("Bearer s3cret-key") == "alice" and keys.tenant_for("Bearer s3cret-kez") is None


def test_a_read_token_opens_nothing_but_media_and_events(sec):
    with sec.client("alice") as alice, httpx.Client(base_url=sec.url, timeout=30) as anon:
        token = alice.post("/v1/tokens").json()["token"]
        for method, path in routes(sec):
            if path in MEDIA_ROUTES and method in ("GET", "HEAD") or path in CAPABILITY_ROUTES:
                continue
            url = fill(path, video_id="01m8zzzzzzzzzzzzzzzzzzzzzz", webhook_id="wh_00", name="240p")
            r = anon.request(method, url, params={"token": token})
            assert r.status_code == 401, (method, path, r.status_code)


def test_processing_quota_is_a_429_with_retry_after(sec, clips):
    with sec.client("carol") as carol, sec.client("alice") as alice:
        first = upload(carol, clips["long"])
        assert first.status_code == 202, first.text
        vid = first.json()["id"]
        # the catalog has it (the quota is counted from its records) and it is still processing
        wait_for(lambda: vid in {v["id"] for v in carol.get("/v1/videos").json()["items"]}, 20, 0.05, "listed")
        second = upload(carol, clips["tiny"])
        if carol.get(f"/v1/videos/{vid}").json()["status"] == "processing":
            assert second.status_code == 429, second.text
            assert second.json()["code"] == "quota_processing" and int(second.headers["retry-after"]) > 0
        assert upload(alice, clips["tiny"]).status_code == 202, "another tenant is not limited"
        wait_status(carol, vid)
        assert upload(carol, clips["tiny"]).status_code == 202, "a slot is free again"


def test_uploads_starting_together_cannot_pass_the_processing_quota_together(sec, clips):
    """Six uploads of one tenant start at once and stream slowly: none is processing yet
    when the others ask, yet the quota of 2 admits two (the admission ledger)."""
    data = clips["long"]
    piece = len(data) // 4 + 1

    def slow_upload(_):
        def body():
            for i in range(0, len(data), piece):
                yield data[i : i + piece]
                time.sleep(0.3)

        with sec.client("erin") as c:
            headers = {"Content-Type": "video/mp4", "Content-Length": str(len(data))}
            return c.post("/v1/videos", content=body(), headers=headers)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(slow_upload, range(6)))
    accepted = [r.json()["id"] for r in results if r.status_code == 202]
    refused = [r for r in results if r.status_code != 202]
    assert len(accepted) == 2, [(r.status_code, r.text) for r in results]
    assert all(r.status_code == 429 and r.json()["code"] == "quota_processing" for r in refused), [
        r.text for r in refused
    ]
    with sec.client("erin") as erin:
        for vid in accepted:
            assert wait_status(erin, vid)["status"] == "ready"
        assert upload(erin, clips["tiny"]).status_code == 202, "the slots are free again"


def test_storage_quota_is_a_403_also_without_content_length(sec, clips):
    with sec.client("dave") as dave:
        first = upload(dave, clips["tiny"])
        assert first.status_code == 202, first.text
        r = upload(dave, clips["tiny"])
        assert r.status_code == 403 and r.json()["code"] == "quota_storage", r.text

        def chunked():  # no Content-Length: the budget caps the stream itself
            yield clips["tiny"][: len(clips["tiny"]) // 2]
            yield clips["tiny"][len(clips["tiny"]) // 2 :]

        r = dave.post("/v1/videos", content=chunked(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 403 and r.json()["code"] == "quota_storage", r.text
        assert [v["id"] for v in dave.get("/v1/videos").json()["items"]] == [first.json()["id"]], "nothing left behind"
        assert dave.delete(f"/v1/videos/{first.json()['id']}").status_code == 200
        assert upload(dave, clips["tiny"]).status_code == 202, "deleting frees the quota"


# --- 2. tenant isolation on every route -----------------------------------------------------------


@pytest.fixture(scope="module")
def alices(sec, clips):
    """Alice's ready video and her webhook, for bob to try."""
    with sec.client("alice") as alice:
        vid = upload(alice, clips["tiny"]).json()["id"]
        video = wait_status(alice, vid)
        assert video["status"] == "ready" and video["renditions"] and video["thumbnail"], video
        hook = alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/alice-hook", "events": ["video.failed"]})
        assert hook.status_code == 201, hook.text
        name = video["renditions"][0]["name"]
        resumable = alice.post("/v1/uploads", headers={**TUS, "Upload-Length": "1000"})
        assert resumable.status_code == 201, resumable.text
        return {
            "video_id": vid,
            "name": name,
            "track": name,
            "segment": "00000",
            "webhook_id": hook.json()["id"],
            "upload_id": resumable.headers["location"].rsplit("/", 1)[1],
        }


def test_another_tenants_things_are_404_on_every_route(sec, alices):
    with sec.client("alice") as alice, sec.client("bob") as bob:
        checked = 0
        for method, path in routes(sec):
            if "{" not in path or path in CAPABILITY_ROUTES:
                continue
            url = fill(path, **alices)
            headers = TUS if path.startswith("/v1/uploads/") else {}
            if method == "DELETE":
                r = bob.request(method, url, headers=headers)
                assert r.status_code == 404 and r.json()["code"] == "not_found", (method, path, r.status_code)
                continue
            mine = alice.request(method, url, timeout=30, headers=headers)
            assert mine.status_code in (200, 206), (method, path, mine.status_code)  # it exists for alice ...
            theirs = bob.request(method, url, timeout=30, headers=headers)
            assert theirs.status_code == 404, (method, path, theirs.status_code)  # ... and not for bob
            if method != "HEAD":
                assert theirs.json()["code"] == "not_found"
            checked += 1
        assert checked >= 6
        # bob's token does not open alice's media either
        token = bob.post("/v1/tokens").json()["token"]
        for path in MEDIA_ROUTES:
            assert httpx.get(sec.url + fill(path, **alices), params={"token": token}).status_code == 404, path
        # lists show only one's own, and nothing about alice leaks through alerts
        assert alices["video_id"] not in bob.get("/v1/videos", params={"limit": 100}).text
        assert alices["webhook_id"] not in bob.get("/v1/webhooks").text
        alerts = bob.get("/v1/alerts")
        assert alerts.status_code == 200
        assert "alice" not in alerts.text and alices["video_id"] not in alerts.text
        # alice still has everything
        assert alice.get(f"/v1/videos/{alices['video_id']}").status_code == 200
        assert alice.get(f"/v1/webhooks/{alices['webhook_id']}").status_code == 200


def test_ids_are_unguessable_and_keys_and_subjects_carry_the_tenant(sec, alices):
    vid = alices["video_id"]
    assert re.fullmatch(r"[0-9a-z]{26}", vid)  # 48 bits of time, then 80 random bits

    async def where(js):
        store = await js.object_store("media")
        names = [o.name for o in await store.list(ignore_deletes=True) if vid in o.name]
        info = await js.stream_info("EVENTS", subjects_filter=f"*.evt.*.*.{vid}")
        return names, list(info.state.subjects or {})

    names, subjects = js_run(nats_servers(sec), where)
    assert names and all(n.startswith(f"alice/{vid}/") for n in names), names
    assert subjects and all(s.endswith(f".alice.{vid}") for s in subjects), subjects


# --- 4. hostile input -----------------------------------------------------------------------------


def test_request_head_and_body_limits(sec):
    with sec.client("alice") as c:
        many = {f"x-h{i}": "1" for i in range(120)}
        r = c.get("/v1/videos", headers=many)
        assert r.status_code == 431 and r.json()["code"] == "headers_too_large"
        assert c.get("/v1/videos", headers={"x-big": "a" * 20000}).status_code == 431
        try:  # uvicorn bounds the head: an answer, or the connection closed under the sender
            assert c.get("/v1/videos", headers={"x-big": "a" * 70000}).status_code in (400, 431)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            pass
        r = c.get("/v1/videos", params={"cursor": "a" * 3000})
        assert r.status_code == 414 and r.json()["code"] == "uri_too_long"
        assert c.get("/v1/videos/" + "a" * 3000).status_code == 414
        big = b'{"url": "http://127.0.0.1:9/x", "description": "' + b"a" * 70000 + b'"}'
        r = c.post("/v1/webhooks", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "too_large"

        def chunks():  # no Content-Length: refused as it passes the limit
            for _ in range(80):
                yield b"a" * 1024

        r = c.post("/v1/webhooks", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/tokens", content=b"x" * 70000).status_code == 413
        assert c.get("/readyz").status_code == 200, "still serving"


def test_json_input_is_strict(sec):
    with sec.client("alice") as c:
        for body in (
            {"url": "http://127.0.0.1:9/x", "secret": "mine"},  # unknown field
            {"url": "http://127.0.0.1:9/x", "events": "video.ready"},  # wrong type
            {"url": "http://127.0.0.1:9/x", "description": "d" * 201},  # too long
            {"url": "http://127.0.0.1:9/x", "events": ["video.ready"] * 4},
            {"url": ""},
            {},
            [],
        ):
            r = c.post("/v1/webhooks", json=body)
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", (body, r.text)
        r = c.post("/v1/webhooks", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        for bad in ({"limit": "lots"}, {"limit": 0}, {"limit": 101}, {"cursor": "c" * 65}):
            r = c.get("/v1/videos", params=bad)
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", bad
        assert c.get("/v1/videos/not-an-id!").status_code == 404


def test_media_limits_are_checked_before_decoding(sec, clips):
    with sec.client("bob") as c:
        r = upload(c, clips["with_audio"])  # 2 streams, the limit is 1
        assert r.status_code == 422 and r.json()["code"] == "too_many_streams", r.text
        r = upload(c, clips["mkv"], **{"Content-Type": "video/x-matroska"})  # not on this mesh's allow-list
        assert r.status_code == 422 and r.json()["code"] == "unsupported_container", r.text
        assert "renditions" not in r.text
        assert upload(c, clips["tiny"]).status_code == 202, "one stream, mp4: fine"


def test_the_probe_is_bounded_in_memory_and_time(tmp_path):
    """A file whose probe would need more memory or time than allowed costs one killed
    child process, never the pipeline service (which runs the probe this way)."""
    clip = make_clip(str(tmp_path / "big.mp4"), width=1920, height=1080, seconds=0.2, audio=False)

    async def go():
        assert (await probe_isolated(clip, timeout_s=30)).width == 1920
        with pytest.raises(MediaError) as small:
            await probe_isolated(clip, max_memory_mb=120, timeout_s=30)
        with pytest.raises(MediaError) as slow:
            await probe_isolated(clip, timeout_s=0.01)
        return small.value, slow.value

    started = time.monotonic()
    small, slow = asyncio.run(go())
    assert small.code == "unreadable" and slow.code == "unreadable" and "longer than" in slow.message
    assert time.monotonic() - started < 20


# --- 3. the whole mesh ran on least-privilege NATS users ------------------------------------------


def test_vidmesh_up_gives_each_service_its_own_generated_nats_user(sec):
    from services.nats_auth import users
    from shared.permissions import local_passwords

    USERS = users()

    passwords = local_passwords(sec.data_dir)
    assert set(passwords) == set(USERS) and len(set(passwords.values())) == len(USERS)
    for name in ("nats-users.json", "nats.conf"):
        assert (sec.data_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert "authorization {" in (sec.data_dir / "nats.conf").read_text()
    pids = {name.split("-")[0]: pid for name, pid in service_pids(sec).items() if name != "nats"}
    assert set(pids) >= {"gateway", "catalog", "pipeline", "transcoder"}
    for service, pid in pids.items():
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        assert env["NATS_USER"] == service and env["NATS_PASSWORD"] == passwords[service], service

    async def anonymous():
        async def quiet(exc):
            pass

        await nats.connect(
            f"nats://127.0.0.1:{sec.nats_port}", allow_reconnect=False, connect_timeout=3, error_cb=quiet
        )

    with pytest.raises(Exception, match="(?i)authorization"):  # and no way in without a user
        asyncio.run(anonymous())


def test_no_service_was_refused_anything_by_nats(sec):
    """Last in this module: everything above ran with each service as its own NATS user."""
    with sec.client("alice") as c:
        assert c.get("/readyz").status_code == 200
    violations = [line for line in sec.lines if "Violation" in line or "permissions violation" in line]
    assert not violations, "\n".join(violations[:20])
    assert not [line for line in sec.lines if "exited with" in line], "no service died"

"""Resumable uploads (tus 1.0.0) and direct-upload URLs against the real mesh: every status
code and header of the core protocol and of the creation, creation-with-upload,
termination, expiration and checksum extensions; completion makes a video as POST
/v1/videos does (refusals as 422 with the probe's code, a repeated final PATCH makes no
second video); quotas and limits at creation; expiry and the scheduled clean-up; one-time
direct-upload URLs used without an API key.

Faults (a gateway killed mid-PATCH, a connection cut under tuspy, the CLI resuming) are in
test_upload_faults.py; browsers in test_dashboard_uploads.py."""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from services.gateway.resumable import upload_key
from shared import topology
from shared.objects import CHUNK_SIZE
from tests.clips import make_clip
from tests.conftest import Mesh, js_run, nats_servers, wait_for
from tests.uploads import TUS, checksum, create, head, metadata, patch, source_sha256, wait_ready

pytestmark = pytest.mark.e2e

EXPIRY_S = 25  # VIDMESH_UPLOAD_EXPIRY_S of this module's mesh


class UploadMesh(Mesh):
    KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("tus-clips")
    return Path(make_clip(str(d / "c.mp4"), width=320, height=240, seconds=1.0)).read_bytes()


@pytest.fixture(scope="module")
def umesh():
    env = {
        "VIDMESH_TRANSCODER_PROCS": "1",
        "VIDMESH_UPLOAD_EXPIRY_S": str(EXPIRY_S),
        "VIDMESH_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
        "VIDMESH_QUOTA_MAX_BYTES_BY_TENANT": "bob:1000000",
    }
    with tempfile.TemporaryDirectory(prefix="vidmesh-tus-") as tmp:
        m = UploadMesh(Path(tmp), env).start()
        yield m
        m.stop()


@pytest.fixture(scope="module")
def doomed(umesh):
    """An upload left half done at the start of the module, to expire while the rest runs."""
    with umesh.client() as c:
        r = create(c, 3 * CHUNK_SIZE)
        url = r.headers["location"]
        assert patch(c, url, 0, os.urandom(CHUNK_SIZE + 10)).status_code == 204
    return url, time.time()


def upload_state(mesh, tenant: str, upload_id: str) -> dict | None:
    import json

    async def get(js):
        kv = await js.key_value(topology.KV_RESUMABLE)
        try:
            entry = await kv.get(upload_key(tenant, upload_id))
        except Exception:
            return None
        return json.loads(entry.value) if entry.value else None

    return js_run(nats_servers(mesh), get)


def chunk_count(mesh, nuid: str) -> int:
    async def count(js):
        subject = f"$O.media.C.{nuid}"
        info = await js.stream_info("OBJ_media", subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    return js_run(nats_servers(mesh), count)


def uploaded_events(mesh, tenant: str, video_id: str) -> int:
    async def count(js):
        info = await js.stream_info("EVENTS", subjects_filter=f"gateway.evt.video_uploaded.{tenant}.{video_id}")
        return sum((info.state.subjects or {}).values())

    return js_run(nats_servers(mesh), count)


def test_options_tells_version_extensions_and_limits_without_a_key(umesh, doomed):
    for path in ("/v1/uploads", "/v1/uploads/whatever"):
        r = httpx.options(umesh.url + path)
        assert r.status_code == 204, r.text
        assert r.headers["tus-version"] == "1.0.0" and r.headers["tus-resumable"] == "1.0.0"
        assert set(r.headers["tus-extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "termination",
            "expiration",
            "checksum",
        }
        assert r.headers["tus-checksum-algorithm"] == "sha256"
        assert r.headers["tus-max-size"] == str(64 * 1024 * 1024)


def test_creation_checks_version_length_metadata_and_key(umesh):
    with umesh.client() as c, httpx.Client(base_url=umesh.url) as anon:
        r = anon.post("/v1/uploads", headers={**TUS, "Upload-Length": "10"})
        assert r.status_code == 401 and r.headers["tus-resumable"] == "1.0.0"
        r = c.post("/v1/uploads", headers={"Upload-Length": "10"})
        assert r.status_code == 412 and r.json()["code"] == "unsupported_version"
        assert r.headers["tus-version"] == "1.0.0" and r.headers["tus-resumable"] == "1.0.0"
        r = c.post("/v1/uploads", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "10"})
        assert r.status_code == 412
        for length, status, code in (
            (None, 400, "invalid_request"),
            ("ten", 400, "invalid_request"),
            ("-5", 400, "invalid_request"),
            ("0", 400, "empty_body"),
            (str(64 * 1024 * 1024 + 1), 413, "too_large"),
        ):
            headers = {**TUS} if length is None else {**TUS, "Upload-Length": length}
            r = c.post("/v1/uploads", headers=headers)
            assert (r.status_code, r.json()["code"]) == (status, code), (length, r.text)
        r = c.post("/v1/uploads", headers={**TUS, "Upload-Defer-Length": "1"})
        assert r.status_code == 400
        r = create(c, 10, **{"Upload-Metadata": "filename not-base64!"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
        meta = metadata(filename="clip é.mp4", filetype="video/mp4") + ",flag"
        r = create(c, 10, **{"Upload-Metadata": meta})
        assert r.status_code == 201, r.text
        assert r.headers["location"].startswith("/v1/uploads/") and r.headers["tus-resumable"] == "1.0.0"
        assert r.headers["upload-expires"].endswith(" GMT")
        h = head(c, r.headers["location"])
        assert h.status_code == 200 and h.headers["upload-offset"] == "0" and h.headers["upload-length"] == "10"
        assert h.headers["upload-metadata"] == meta and h.headers["cache-control"] == "no-store"
        assert h.headers["upload-expires"] == r.headers["upload-expires"]


def test_patches_become_a_video_and_a_repeat_makes_no_second_one(umesh, clip):
    with umesh.client() as c, umesh.client("bob") as bob:
        r = create(c, len(clip), **{"Upload-Metadata": metadata(filename="tus.mp4", filetype="video/mp4")})
        url = r.headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        # the checks of a PATCH
        assert patch(c, url, 0, b"x", **{"Content-Type": "video/mp4"}).status_code == 415
        r = patch(c, url, 0, b"x", **{"Tus-Resumable": "2.0.0"})
        assert r.status_code == 412 and r.headers["tus-version"] == "1.0.0"
        r = patch(c, url, 5, b"x")
        assert r.status_code == 409 and r.json()["code"] == "offset_mismatch" and r.headers["upload-offset"] == "0"
        assert (
            c.patch(url, content=b"x", headers={**TUS, "Content-Type": "application/offset+octet-stream"}).status_code
            == 400
        )
        assert patch(c, url, 0, b"x" * (len(clip) + 1)).status_code == 413
        assert patch(c, "/v1/uploads/01m8nosuchupload000000000", 0, b"x").status_code == 404
        assert patch(bob, url, 0, b"x").status_code == 404 and head(bob, url).status_code == 404
        assert bob.delete(url, headers=TUS).status_code == 404
        # pieces: under a chunk (kept in the upload's state), then the rest with a checksum
        cut = 1000
        r = patch(c, url, 0, clip[:cut])
        assert r.status_code == 204 and r.headers["upload-offset"] == str(cut)
        assert r.headers["upload-expires"].endswith(" GMT") and r.headers["tus-resumable"] == "1.0.0"
        assert head(c, url).headers["upload-offset"] == str(cut)
        r = patch(c, url, cut, clip[cut:], **{"Upload-Checksum": checksum(clip[cut:])})
        assert r.status_code == 204, r.text
        assert r.headers["upload-offset"] == str(len(clip))
        assert r.headers["vidmesh-video-id"] == upload_id and r.headers["location"] == f"/v1/videos/{upload_id}"
        video = wait_ready(c, upload_id, 90)
        assert video["status"] == "ready" and video["filename"] == "tus.mp4"
        sha = js_run(nats_servers(umesh), lambda js: source_sha256(js, "alice", upload_id))
        import hashlib

        assert sha == hashlib.sha256(clip).hexdigest()
        # the final PATCH again (its answer was lost): the same video, nothing redone
        r = patch(c, url, len(clip), b"")
        assert r.status_code == 204 and r.headers["vidmesh-video-id"] == upload_id
        assert r.headers["location"] == f"/v1/videos/{upload_id}"
        r = patch(c, url, cut, clip[cut:])
        assert r.status_code == 409 and r.headers["vidmesh-video-id"] == upload_id
        h = head(c, url)
        assert h.status_code == 200 and h.headers["upload-offset"] == str(len(clip))
        assert h.headers["vidmesh-video-id"] == upload_id and "upload-expires" not in h.headers
        assert uploaded_events(umesh, "alice", upload_id) == 1
        assert len([v for v in c.get("/v1/videos", params={"limit": 100}).json()["items"] if v["id"] == upload_id]) == 1


def test_creation_with_upload_and_method_override(umesh, clip):
    with umesh.client() as c:
        r = c.post(
            "/v1/uploads",
            content=clip,
            headers={**TUS, "Upload-Length": str(len(clip)), "Content-Type": "application/offset+octet-stream"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["upload-offset"] == str(len(clip)) and r.headers["location"].startswith("/v1/uploads/")
        assert wait_ready(c, r.headers["vidmesh-video-id"], 90)["status"] == "ready"
        r = c.post("/v1/uploads", content=b"abc", headers={**TUS, "Upload-Length": "10", "Content-Type": "video/mp4"})
        assert r.status_code == 415
        # X-HTTP-Method-Override: PATCH and HEAD through POST
        url = create(c, len(clip)).headers["location"]
        r = c.post(
            url,
            content=clip[:500],
            headers={
                **TUS,
                "X-HTTP-Method-Override": "PATCH",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert r.status_code == 204 and r.headers["upload-offset"] == "500"
        r = c.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
        assert r.status_code == 200 and r.headers["upload-offset"] == "500"
        assert c.post(url, headers=TUS).status_code == 405


def test_checksum_mismatch_is_460_and_keeps_nothing(umesh):
    with umesh.client() as c:
        data = os.urandom(3 * CHUNK_SIZE + 77)
        url = create(c, len(data) + 100).headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        assert patch(c, url, 0, data[:10]).status_code == 204
        r = patch(c, url, 10, data[10:], **{"Upload-Checksum": checksum(b"not this")})
        assert r.status_code == 460 and r.json()["code"] == "checksum_mismatch"
        assert r.headers["upload-offset"] == "10" and head(c, url).headers["upload-offset"] == "10"
        state = upload_state(umesh, "alice", upload_id)
        assert state["chunks"] == 0 and chunk_count(umesh, state["nuid"]) == 0  # its chunks were deleted
        r = patch(c, url, 10, data[10:], **{"Upload-Checksum": "md5 " + base64.b64encode(b"0" * 16).decode()})
        assert r.status_code == 400 and r.json()["code"] == "unsupported_checksum"
        r = patch(c, url, 10, data[10:], **{"Upload-Checksum": "sha256 !!"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_checksum"
        r = patch(c, url, 10, data[10:], **{"Upload-Checksum": checksum(data[10:])})
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
        state = upload_state(umesh, "alice", upload_id)
        assert chunk_count(umesh, state["nuid"]) == state["chunks"] == 3


def test_a_complete_upload_the_probe_refuses_is_422_with_its_code(umesh):
    with umesh.client() as c:
        # seeded: now and then fresh random bytes parse as some raw stream (h263 was seen)
        noise = random.Random(0).randbytes(200_000)
        url = create(c, len(noise)).headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        r = patch(c, url, 0, noise)
        assert r.status_code == 422 and r.json()["code"] == "not_media", r.text
        assert r.headers["upload-offset"] == str(len(noise)) and "vidmesh-video-id" not in r.headers
        h = head(c, url)
        assert h.status_code == 200 and h.headers["vidmesh-upload-error"] == "not_media"
        r = patch(c, url, len(noise), b"")  # the same answer again, nothing redone
        assert r.status_code == 422 and r.json()["code"] == "not_media"
        assert c.get(f"/v1/videos/{upload_id}").status_code == 404
        assert uploaded_events(umesh, "alice", upload_id) == 0


def test_termination_frees_the_bytes_and_the_url_is_gone(umesh):
    with umesh.client() as c:
        data = os.urandom(2 * CHUNK_SIZE + 5)
        url = create(c, len(data) + 10).headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        assert patch(c, url, 0, data).status_code == 204
        nuid = upload_state(umesh, "alice", upload_id)["nuid"]
        assert chunk_count(umesh, nuid) == 2
        assert c.delete(url).status_code == 412  # without Tus-Resumable
        r = c.delete(url, headers=TUS)
        assert r.status_code == 204 and r.headers["tus-resumable"] == "1.0.0"
        assert chunk_count(umesh, nuid) == 0
        assert head(c, url).status_code == 410
        r = patch(c, url, len(data), b"more")
        assert r.status_code == 410 and r.json()["code"] == "upload_terminated"
        assert c.delete(url, headers=TUS).status_code == 410


def test_quota_and_size_limits_are_checked_at_creation(umesh):
    with umesh.client("bob") as bob:
        r = create(bob, 2_000_000)
        assert r.status_code == 403 and r.json()["code"] == "quota_storage"
        r = create(bob, 600_000)
        assert r.status_code == 201
        # the first upload's length stays reserved while it is open
        r2 = create(bob, 600_000)
        assert r2.status_code == 403 and r2.json()["code"] == "quota_storage"
        assert bob.delete(r.headers["location"], headers=TUS).status_code == 204
        assert create(bob, 600_000).status_code == 201  # terminated: its reservation is freed


def test_direct_upload_urls_are_one_time_and_need_no_key(umesh, clip):
    with umesh.client() as c, httpx.Client(timeout=60) as anon:
        assert anon.post(umesh.url + "/v1/direct-uploads", json={}).status_code == 401
        assert c.post("/v1/direct-uploads", json={"max_size": 0}).status_code == 400
        assert c.post("/v1/direct-uploads", json={"colour": "red"}).status_code == 400
        made = c.post("/v1/direct-uploads", json={"max_size": len(clip), "filename": "from-browser.mp4"})
        assert made.status_code == 201, made.text
        body = made.json()
        url = body["url"]
        assert url.startswith(umesh.url + "/v1/direct-uploads/") and body["max_size"] == len(clip)
        assert body["expires_at"] > time.time() and body["id"].startswith("du_")
        token = url.rsplit("/", 1)[1]
        # no key anywhere from here on; CORS open for a page on any origin
        r = anon.options(url, headers={"Origin": "https://customer.example", "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        assert "Upload-Length" in r.headers["access-control-allow-headers"]
        assert head(anon, url).status_code == 404  # nothing created with it yet
        r = create(anon, len(clip) + 1, endpoint=url)
        assert r.status_code == 413  # over the URL's max size
        r = create(anon, len(clip), endpoint=url, Origin="https://customer.example")
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v1/direct-uploads/{token}"
        assert (
            r.headers["access-control-allow-origin"] == "*" and "Location" in r.headers["access-control-expose-headers"]
        )
        again = create(anon, len(clip), endpoint=url)
        assert again.status_code == 403 and again.json()["code"] == "already_used"
        assert anon.get(url).status_code == 405  # it reads nothing
        assert anon.get(umesh.url + "/v1/videos", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        r = patch(anon, url, 0, clip)
        assert r.status_code == 204, r.text
        video_id = r.headers["vidmesh-video-id"]
        assert "Vidmesh-Video-Id" in r.headers["access-control-expose-headers"]
        video = wait_ready(c, video_id, 90)  # the tenant's video, named as the URL's maker asked
        assert video["status"] == "ready" and video["filename"] == "from-browser.mp4"
        with umesh.client("bob") as bob:
            assert bob.get(f"/v1/videos/{video_id}").status_code == 404
        # an expired URL answers 410 to everything; a made-up one 404
        short = c.post("/v1/direct-uploads", json={"expires_in": 1}).json()["url"]
        time.sleep(1.2)
        r = create(anon, 10, endpoint=short)
        assert r.status_code == 410 and r.json()["code"] == "expired"
        assert create(anon, 10, endpoint=umesh.url + "/v1/direct-uploads/" + "x" * 43).status_code == 404


def test_an_expired_upload_is_410_then_removed_by_the_scheduled_job(umesh, doomed):
    url, created = doomed
    with umesh.client() as c:
        upload_id = url.rsplit("/", 1)[1]
        nuid = upload_state(umesh, "alice", upload_id)["nuid"]
        assert chunk_count(umesh, nuid) == 1
        wait_for(lambda: time.time() > created + EXPIRY_S + 0.5, EXPIRY_S + 5, 0.2, "the upload to expire")
        r = patch(c, url, CHUNK_SIZE + 10, b"late")
        assert r.status_code == 410 and r.json()["code"] == "upload_expired"
        assert head(c, url).status_code == 410
        # the clean-up job, run now as if its grace period had passed (vidmesh schedules run)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "services",
                "schedules",
                "run",
                "upload_expiry",
                "--as-of",
                str(int(time.time()) + 600),
            ],
            env=umesh.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert head(c, url).status_code == 404
        assert chunk_count(umesh, nuid) == 0 and upload_state(umesh, "alice", upload_id) is None


def test_no_service_was_refused_anything_by_nats(umesh):
    """Last: every resumable-upload path above ran with each service as its own NATS user
    (batches on the media stream, message deletes, the lock hand-over, the clean-up job)."""
    violations = [line for line in umesh.lines if "Violation" in line or "permissions violation" in line]
    assert not violations, "\n".join(violations[:20])
    assert not [line for line in umesh.lines if "exited with" in line], "no service died"

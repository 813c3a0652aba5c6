"""The walking skeleton through `vidmesh up`: upload, get, list, delete, auth and errors."""

from __future__ import annotations

import httpx
import pytest

from tests.clips import make_clip
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clips") / "tiny.mp4"
    make_clip(str(path), width=320, height=240, seconds=1.0)
    return path.read_bytes()


def upload(client: httpx.Client, data: bytes, **headers) -> httpx.Response:
    return client.post("/v1/videos", content=data, headers={"Content-Type": "video/mp4", **headers})


def wait_status(client: httpx.Client, video_id: str, statuses=("ready", "failed"), timeout=120) -> dict:
    def done():
        body = client.get(f"/v1/videos/{video_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout, 0.2, f"video {video_id} to reach {statuses}")


def test_raw_upload_is_accepted_and_becomes_ready(mesh, clip):
    with mesh.client() as c:
        r = upload(c, clip)
        assert r.status_code == 202, r.text
        body = r.json()
        assert r.headers["location"] == f"/v1/videos/{body['id']}"
        assert body["status"] == "processing"
        assert body["source"]["size"] == len(clip)
        assert body["source"]["width"] == 320 and body["source"]["height"] == 240
        # read back right away: the catalog answers even before its projection caught up
        got = c.get(r.headers["location"])
        assert got.status_code == 200 and got.json()["id"] == body["id"]
        final = wait_status(c, body["id"])
        assert final["status"] == "ready", final
        assert [r["name"] for r in final["renditions"]] == ["240p"]
        assert final["thumbnail"]["url"].endswith("/thumbnail")
        assert final["error"] is None
        assert final["updated_at"] >= final["created_at"]


def test_multipart_upload_keeps_the_filename(mesh, clip):
    with mesh.client() as c:
        r = c.post("/v1/videos", files={"file": ("holiday.mp4", clip, "video/mp4")})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["filename"] == "holiday.mp4"
        assert body["source"]["size"] == len(clip)
        assert wait_status(c, body["id"])["status"] == "ready"


def test_multipart_without_a_file_part_is_400(mesh):
    with mesh.client() as c:
        r = c.post("/v1/videos", data={"title": "no file"}, files={"other": ("x.txt", b"", "text/plain")})
        # an empty "other" file is a file part, so send a form with fields only
        r = c.post(
            "/v1/videos",
            content=b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n--b--\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 400
        assert r.json()["code"] == "bad_multipart"


def test_list_is_newest_first_with_cursor_pagination(mesh, clip):
    with mesh.client("bob") as c:
        ids = [upload(c, clip).json()["id"] for _ in range(3)]
        wait_for(lambda: len(c.get("/v1/videos", params={"limit": 100}).json()["items"]) >= 3, 30, what="listing")
        page1 = c.get("/v1/videos", params={"limit": 2}).json()
        assert [v["id"] for v in page1["items"]] == ids[::-1][:2]
        assert page1["next_cursor"]
        page2 = c.get("/v1/videos", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
        assert ids[0] in [v["id"] for v in page2["items"]]
        assert not set(v["id"] for v in page1["items"]) & set(v["id"] for v in page2["items"])


def test_bad_limit_is_a_400_with_a_code(mesh):
    with mesh.client() as c:
        r = c.get("/v1/videos", params={"limit": 0})
        assert r.status_code == 400
        assert r.json()["code"] == "invalid_request"


def test_delete_marks_deleted_and_removes_media(mesh, clip):
    with mesh.client() as c:
        video_id = upload(c, clip).json()["id"]
        ready = wait_status(c, video_id)
        rendition_url = ready["renditions"][0]["url"]
        assert c.get(rendition_url).status_code == 200
        r = c.delete(f"/v1/videos/{video_id}")
        assert r.status_code == 200 and r.json()["status"] == "deleted"
        assert c.get(f"/v1/videos/{video_id}").json()["status"] == "deleted"
        assert c.get(rendition_url).status_code == 404
        assert video_id not in [v["id"] for v in c.get("/v1/videos", params={"limit": 100}).json()["items"]]


def test_requests_without_a_valid_key_are_401(mesh, clip):
    with httpx.Client(base_url=mesh.url) as anon:
        r = anon.get("/v1/videos")
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        bad = anon.get("/v1/videos", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert anon.post("/v1/videos", content=clip, headers={"Content-Type": "video/mp4"}).status_code == 401
        assert anon.get("/healthz").status_code == 200


def test_another_tenants_video_is_404(mesh, clip):
    with mesh.client("alice") as alice, mesh.client("bob") as bob:
        video_id = upload(alice, clip).json()["id"]
        for path in ("", "/thumbnail", "/renditions/240p", "/events"):
            r = bob.get(f"/v1/videos/{video_id}{path}")
            assert r.status_code == 404, (path, r.text)
            assert r.json()["code"] == "not_found"
        assert bob.delete(f"/v1/videos/{video_id}").status_code == 404
        assert alice.get(f"/v1/videos/{video_id}").status_code == 200
        assert video_id not in [v["id"] for v in bob.get("/v1/videos", params={"limit": 100}).json()["items"]]


def test_unknown_video_is_404(mesh):
    with mesh.client() as c:
        r = c.get("/v1/videos/01zzzzzzzzzzzzzzzzzzzzzzzz")
        assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_empty_body_is_400(mesh):
    with mesh.client() as c:
        r = upload(c, b"")
        assert r.status_code == 400 and r.json()["code"] == "empty_body"


def test_wrong_content_type_is_415(mesh, clip):
    with mesh.client() as c:
        for ctype in ("text/plain", "application/json", "application/x-www-form-urlencoded", "image/png"):
            r = c.post("/v1/videos", content=clip, headers={"Content-Type": ctype})
            assert r.status_code == 415, ctype
            assert r.json()["code"] == "unsupported_media_type"


def test_openapi_docs_are_served(mesh):
    with httpx.Client(base_url=mesh.url) as anon:
        assert anon.get("/docs").status_code == 200
        spec = anon.get("/openapi.json").json()
        assert "/v1/videos" in spec["paths"] and "/v1/videos/{video_id}" in spec["paths"]


def test_metrics_are_prometheus_text(mesh):
    with httpx.Client(base_url=mesh.url) as anon:
        r = anon.get("/metrics")
        assert r.status_code == 200
        assert "vidmesh_rpc_server_seconds" in r.text or "python_info" in r.text

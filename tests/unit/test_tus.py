"""Pure parts of resumable uploads: tus header parsing, which routes stream their bodies, the
answer's headers per upload state, and the CLI's resume key and chunk sizes."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest

from services import tusclient
from services.gateway.app import ApiError
from services.gateway.limits import streams_body
from services.gateway.resumable import UploadError, UploadState, direct_key, stride_for
from services.gateway.tus import http_date, parse_checksum, parse_metadata, upload_headers
from shared.objects import CHUNK_SIZE, MAX_CHECKPOINTS


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_upload_metadata_pairs_decode_and_bad_ones_are_400():
    raw = f"filename {b64('a clip, é.mp4')},filetype {b64('video/mp4')}, flag"
    assert parse_metadata(raw) == {"filename": "a clip, é.mp4", "filetype": "video/mp4", "flag": ""}
    assert parse_metadata(None) == {} and parse_metadata("  ") == {}
    for bad in (
        "filename !!!",
        f"filename {b64('a')},filename {b64('b')}",
        "a,,b",
        "k a b",
        "k " + base64.b64encode(bytes([255])).decode(),
        "x" * 5000,
    ):
        with pytest.raises(ApiError) as exc:
            parse_metadata(bad)
        assert exc.value.status == 400 and exc.value.code == "invalid_metadata", bad


def test_upload_checksum_is_sha256_only():
    digest = hashlib.sha256(b"body").digest()
    assert parse_checksum("sha256 " + base64.b64encode(digest).decode()) == digest
    assert parse_checksum("SHA256 " + base64.b64encode(digest).decode()) == digest
    assert parse_checksum(None) is None
    with pytest.raises(ApiError) as exc:
        parse_checksum("md5 " + base64.b64encode(b"0" * 16).decode())
    assert (exc.value.status, exc.value.code) == (400, "unsupported_checksum")
    for bad in ("sha256", "sha256 !!!", "sha256 " + base64.b64encode(b"short").decode()):
        with pytest.raises(ApiError) as exc:
            parse_checksum(bad)
        assert (exc.value.status, exc.value.code) == (400, "invalid_checksum"), bad


def test_only_upload_bodies_stream_past_the_json_limit():
    streamed = [
        ("POST", "/v1/videos"),
        ("POST", "/v1/uploads"),
        ("PATCH", "/v1/uploads/abc"),
        ("POST", "/v1/uploads/abc"),
        ("PATCH", "/v1/direct-uploads/tok_en-1"),
        ("POST", "/v1/direct-uploads/t"),
    ]
    bounded = [
        ("POST", "/v1/direct-uploads"),
        ("POST", "/v1/webhooks"),
        ("PATCH", "/v1/videos/x"),
        ("POST", "/v1/uploads/a/b"),
        ("DELETE", "/v1/uploads/abc"),
        ("POST", "/v1/tokens"),
    ]
    assert all(streams_body(m, p) for m, p in streamed)
    assert not any(streams_body(m, p) for m, p in bounded)


def state(**kw) -> UploadState:
    base = dict(id="v1", tenant="t", length=100, created_at=0.0, expires_at=86400.0, nuid="n", offset=40)
    return UploadState(**{**base, **kw})


def test_the_answer_says_the_offset_the_expiry_or_the_video():
    h = upload_headers(state())
    assert h == {"Upload-Offset": "40", "Cache-Control": "no-store", "Upload-Expires": "Fri, 02 Jan 1970 00:00:00 GMT"}
    done = upload_headers(state(status="done", offset=100), completed_by_patch=True)
    assert done["Vidmesh-Video-Id"] == "v1" and done["Location"] == "/v1/videos/v1" and "Upload-Expires" not in done
    assert "Location" not in upload_headers(state(status="done", offset=100))  # HEAD names it, no Location
    refused = upload_headers(state(status="refused", offset=100, error=UploadError(code="not_media", message="m")))
    assert refused["Vidmesh-Upload-Error"] == "not_media" and "Vidmesh-Video-Id" not in refused
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_the_seek_index_of_any_upload_fits_the_object_metadata():
    assert stride_for(1) == 1 and stride_for(MAX_CHECKPOINTS * CHUNK_SIZE) == 1
    for length in (MAX_CHECKPOINTS * CHUNK_SIZE + 1, 4 * 1024**3, 5 * 1024**4):
        chunks = -(-length // CHUNK_SIZE)
        assert -(-chunks // stride_for(length)) <= MAX_CHECKPOINTS


def test_direct_upload_keys_hide_the_url_secret():
    key = direct_key("s3cret-token-value-abcdefghij")
    assert key.startswith("du.") and "s3cret" not in key and len(key) == 51
    assert key == direct_key("s3cret-token-value-abcdefghij") != direct_key("s3cret-token-value-abcdefghik")


def test_chunk_sizes_parse_as_powers_of_1024():
    assert tusclient.parse_size("64M") == 64 * 1024**2 == tusclient.parse_size("64MiB") == tusclient.parse_size("64mb")
    assert tusclient.parse_size("512K") == 512 * 1024 and tusclient.parse_size("1G") == 1024**3
    assert tusclient.parse_size("1048576") == 1024**2 and tusclient.parse_size("1.5M") == 1536 * 1024
    for bad in ("", "M", "-1M", "0", "lots"):
        with pytest.raises(ValueError):
            tusclient.parse_size(bad)


def test_an_upload_is_resumed_only_for_the_same_file_server_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDMESH_DATA_DIR", str(tmp_path / "data"))
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 10)
    key = tusclient.resume_key("http://gw:8080/", f)
    assert key == tusclient.resume_key("http://gw:8080", f)
    assert key != tusclient.resume_key("http://other:8080", f)
    saved = tusclient.Saved("http://gw:8080", f)
    saved.save("/v1/uploads/abc")
    assert saved.load() == "/v1/uploads/abc" and (saved.file.stat().st_mode & 0o777) == 0o600
    os.utime(f, (time.time() + 10, time.time() + 10))  # touched: another file now
    assert tusclient.Saved("http://gw:8080", f).load() is None
    f.write_bytes(b"x" * 11)
    assert tusclient.resume_key("http://gw:8080", f) != key
    saved.drop()
    assert saved.load() is None


def test_resume_with_nothing_to_resume_says_so_and_starts_an_upload(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDMESH_DATA_DIR", str(tmp_path / "data"))
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 10)
    said, sent = [], []

    class Stop(Exception):
        pass

    def send(method, path, **kwargs):
        sent.append((method, path))
        raise Stop  # the creation request is all this test is about

    with pytest.raises(Stop):
        tusclient.upload(send, "http://gw:8080", f, chunk_size=4, resume=True, say=said.append)
    assert sent == [("POST", "/v1/uploads")], "nothing stored to HEAD: a new upload is created"
    assert said and "no interrupted upload" in said[0] and "a.mp4" in said[0]

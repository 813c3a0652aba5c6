"""The CLI's side of resumable uploads (tus 1.0.0): `vidmesh upload` sends a file larger than
`--chunk-size` as a tus upload, one PATCH per chunk, each with `Upload-Checksum: sha256`.

A dropped connection, a gateway restarting (503, 408) or an upload another request still
holds (423) is retried from the offset HEAD reports. The upload's URL is kept under the
data dir (`$VIDMESH_DATA_DIR/uploads/<key>.json`), keyed by the server, the file's
absolute path, its size and its modification time: `vidmesh upload --resume FILE` after an
interrupted run (Ctrl-C, a crash, a closed laptop) continues where the gateway's offset
says, and a file that changed since (another size or mtime) starts over.

Plain httpx, no tus library: the client is a few requests, and the gateway's JSON errors
(`code`, `message`) and video id (`Vidmesh-Video-Id`) are what the CLI reports.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import time
from collections.abc import Callable
from pathlib import Path

from shared.settings import Settings

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"
PIECE = 256 * 1024
RETRIES = 8  # failures in a row before giving up (each resumes from HEAD's offset)
RETRYABLE = (
    "connection_lost",
    "unreachable",
    "unavailable",
    "not_ready",
    "request_timeout",
    "upload_locked",
    "offset_mismatch",
    "timeout",
    "incomplete_body",
)


def parse_size(text: str) -> int:
    """`64M`, `64MiB`, `1G`, `1048576` -> bytes (K/M/G are powers of 1024)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    if raw and raw[-1] in "KMG":
        factor = 1024 ** ("KMG".index(raw[-1]) + 1)
        raw = raw[:-1]
    try:
        value = int(float(raw) * factor)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 64M, 512K, 1G)") from None
    if value < 1:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def state_dir() -> Path:
    return Settings.load().data_dir / "uploads"


def resume_key(server: str, path: Path) -> str:
    """The key an interrupted upload of this file on this server is kept under."""
    st = path.stat()
    text = f"{server.rstrip('/')}\n{path.resolve()}\n{st.st_size}\n{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Saved:
    """The upload URL of one file, kept until the upload is done."""

    def __init__(self, server: str, path: Path):
        self.file = state_dir() / f"{resume_key(server, path)}.json"
        self.path = path

    def load(self) -> str | None:
        try:
            return json.loads(self.file.read_text())["url"]
        except (OSError, ValueError, KeyError):
            return None

    def save(self, url: str) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "path": str(self.path.resolve()), "saved_at": time.time()}, f)

    def drop(self) -> None:
        self.file.unlink(missing_ok=True)


def _checksum(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    for piece in _pieces(path, offset, length):
        digest.update(piece)
    return "sha256 " + base64.b64encode(digest.digest()).decode()


def _pieces(path: Path, offset: int, length: int, on_piece: Callable[[int], None] | None = None, piece: int = PIECE):
    """`length` bytes of the file from `offset`, `piece` bytes at a time (a streamed body)."""
    with path.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            data = f.read(min(piece, left))
            if not data:
                return
            left -= len(data)
            if on_piece:
                on_piece(len(data))
            yield data


def upload(
    send: Callable,
    server: str,
    path: Path,
    *,
    chunk_size: int,
    resume: bool,
    on_progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Upload `path` with tus; returns the id of the video it became. `send(method, path,
    **httpx kwargs)` raises the CLI's ApiError on an error answer."""
    size = path.stat().st_size
    saved = Saved(server, path)
    url = saved.load() if resume else None
    if resume and url is None and say:
        say(f"{path.name}: no interrupted upload of this file (same path, size and time) to resume; starting one")
    offset = 0
    if url is not None:
        try:
            head = send("HEAD", url, headers=TUS)
            offset = int(head.headers["upload-offset"])
            if head.headers.get("vidmesh-video-id"):
                saved.drop()
                return head.headers["vidmesh-video-id"]
            if say:
                say(f"{path.name}: resuming at {offset} of {size} bytes")
        except Exception as exc:
            if getattr(exc, "code", None) in RETRYABLE:
                raise
            if say:
                say(f"{path.name}: the interrupted upload is gone ({getattr(exc, 'code', exc)}); starting over")
            url = None
    if url is None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        meta = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (("filename", path.name), ("filetype", ctype))
        )
        created = send("POST", "/v1/uploads", headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": meta})
        url = created.headers["location"]
        saved.save(url)
    failures = 0
    while True:
        try:
            if offset >= size:  # complete (a lost answer): HEAD names the video
                head = send("HEAD", url, headers=TUS)
                video = head.headers.get("vidmesh-video-id")
                if video:
                    saved.drop()
                    return video
                from services.client import ApiError  # (client.py imports this module)

                error = head.headers.get("vidmesh-upload-error") or "refused"
                saved.drop()
                raise ApiError(error, "the gateway refused the complete upload", 422)
            length = min(chunk_size, size - offset)
            sent = [0]

            def progressed(n: int) -> None:
                sent[0] += n
                if on_progress:
                    on_progress(offset + sent[0])

            answer = send(
                "PATCH",
                url,
                content=_pieces(path, offset, length, progressed),
                headers={
                    **TUS,
                    "Upload-Offset": str(offset),
                    "Content-Type": OFFSET_TYPE,
                    "Content-Length": str(length),
                    "Upload-Checksum": _checksum(path, offset, length),
                },
            )
            offset = int(answer.headers["upload-offset"])
            failures = 0
            if on_progress:
                on_progress(offset)
            if answer.headers.get("vidmesh-video-id"):
                saved.drop()
                return answer.headers["vidmesh-video-id"]
        except Exception as exc:
            code = getattr(exc, "code", None)
            if offset >= size or (code not in RETRYABLE and getattr(exc, "status", None) != 460):
                if getattr(exc, "status", None) in (404, 410, 422):
                    saved.drop()  # gone, expired or refused: resuming cannot help
                raise
            failures += 1
            if failures > RETRIES:
                raise
            delay = getattr(exc, "retry_after", None) or min(0.5 * 2**failures, 10.0)
            if say:
                say(f"{path.name}: {code or 'checksum_mismatch'}, resuming in {delay:.0f} s")
            sleep(delay)
            try:
                offset = int(send("HEAD", url, headers=TUS).headers["upload-offset"])
            except Exception as again:
                if getattr(again, "code", None) not in RETRYABLE:
                    raise
                # keep the offset: a wrong one gets 409 offset_mismatch, retried with a HEAD like any failure

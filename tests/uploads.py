"""Helpers of the resumable-upload tests and benchmark: big videos that process fast, a TCP
proxy that cuts connections mid-body, and a bare tus client (httpx) for protocol tests."""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import struct
import threading
from pathlib import Path

import httpx

from tests.clips import make_clip

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def make_padded_clip(path, size: int, *, seconds: float = 1.0, seed: int = 7) -> str:
    """A valid MP4 of exactly `size` bytes that processes as fast as a tiny one: a short
    faststart clip (moov before mdat) followed by a `free` box of random bytes, which
    demuxers skip. Big uploads without big transcodes."""
    path = Path(path)
    small = path.with_suffix(".small.mp4")
    make_clip(small, width=320, height=240, seconds=seconds, faststart=True)
    head = small.read_bytes()
    small.unlink()
    pad = size - len(head)
    if pad < 8:
        raise ValueError(f"size {size} is below the clip's own {len(head)} bytes")
    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    with path.open("wb") as f:
        f.write(head)
        f.write(struct.pack(">I4s", pad, b"free"))
        left, n = pad - 8, 0
        while left:
            piece = block[: min(len(block), left)]
            # vary every MiB so no two chunks of the upload are equal
            f.write(n.to_bytes(8, "big")[: len(piece)] + piece[8:])
            left -= len(piece)
            n += 1
    return str(path)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def create(client: httpx.Client, length: int, endpoint: str = "/v1/uploads", **headers) -> httpx.Response:
    return client.post(endpoint, headers={**TUS, "Upload-Length": str(length), **headers})


def patch(client: httpx.Client, url: str, offset: int, data, **headers) -> httpx.Response:
    return client.patch(
        url, content=data, headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE, **headers}
    )


def head(client: httpx.Client, url: str) -> httpx.Response:
    return client.head(url, headers=TUS)


def wait_ready(client: httpx.Client, video_id: str, timeout: float = 120) -> dict:
    """The video once it is ready or failed (`wait_terminal` of tests/conftest.py, for one)."""
    from tests.conftest import wait_terminal

    return wait_terminal(client, [video_id], timeout)[video_id]


async def source_sha256(js, tenant: str, video_id: str) -> str:
    """The sha256 of a video's stored source, read chunk by chunk from the object store."""
    from shared.objects import MediaStore

    store = MediaStore(js, "media")
    info = await store.info(f"{tenant}/{video_id}/source")
    assert info is not None, f"no source object for {tenant}/{video_id}"
    digest = hashlib.sha256()
    async for piece in store.read(info):
        digest.update(piece)
    return digest.hexdigest()


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of the gateway. `cut_after(n)`: the connection that
    carries the n-th byte sent upstream (counted from then on) is closed at once, both ways,
    as when Wi-Fi drops; later connections pass. `delay_s`: a pause per 64 KiB sent upstream
    (a slow link). It records the request lines and tus headers it saw (`requests`)."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._cut_at: int | None = None
        self._sent = 0
        self.cuts = 0
        self.delay_s = 0.0
        self.requests: list[str] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._sent, self._cut_at = 0, n

    def close(self) -> None:
        self._closed = True
        self.server.close()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        dead = threading.Event()

        def kill():
            dead.set()
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def down():  # from the gateway to the client
            try:
                while not dead.is_set():
                    data = upstream.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
            except OSError:
                pass
            kill()

        threading.Thread(target=down, daemon=True).start()
        try:
            while not dead.is_set():
                data = client.recv(65536)
                if not data:
                    break
                self._note(data)
                cut = False
                with self._lock:
                    if self._cut_at is not None:
                        self._sent += len(data)
                        if self._sent >= self._cut_at:
                            self._cut_at, cut = None, True
                            self.cuts += 1
                if cut:
                    break
                upstream.sendall(data)
                if self.delay_s:
                    dead.wait(self.delay_s)
        except OSError:
            pass
        kill()

    def _note(self, data: bytes) -> None:
        # request heads start a packet in these tests' clients often enough to be useful
        for method in (b"POST ", b"PATCH ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"GET "):
            if data.startswith(method):
                head_end = data.find(b"\r\n\r\n")
                lines = data[: head_end if head_end > 0 else 2048].decode("latin-1").split("\r\n")
                keep = [lines[0]] + [
                    ln for ln in lines[1:] if ln.lower().startswith(("upload-offset", "upload-length"))
                ]
                self.requests.append(" | ".join(keep))
                return

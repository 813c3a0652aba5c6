"""Fixtures: a real nats-server on a free port, and the whole mesh started by `vidmesh up`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from services.up import nats_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until condition() is truthy; return its value (never sleep a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class NatsServer:
    def __init__(self, store: Path, port: int | None = None):
        self.port = port or free_port()
        self.monitor = free_port()
        self.store = store
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        conf = self.store / "nats.conf"
        self.store.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor}\n"
            f'jetstream {{ store_dir: "{self.store}", sync_interval: always }}\n'
        )
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 20, what="nats-server healthy")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


class Mesh:
    """`vidmesh up` as a child process, driven over HTTP."""

    KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}

    def __init__(self, data_dir: Path, extra_env: dict | None = None):
        self.data_dir = data_dir
        self.http_port = free_port()
        self.nats_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.lines: list[str] = []
        self.env = {
            **os.environ,
            "VIDMESH_DATA_DIR": str(data_dir),
            "VIDMESH_HTTP_PORT": str(self.http_port),
            "VIDMESH_NATS_PORT": str(self.nats_port),
            "VIDMESH_NATS_MONITOR_PORT": str(free_port()),
            "VIDMESH_API_KEYS": ",".join(f"{t}:{k}" for t, k in self.KEYS.items()),
            "VIDMESH_TMP_DIR": str(data_dir / "tmp"),
            "OTEL_SDK_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.env.pop("NATS_URL", None)
        (data_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mesh":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(self.ready, 60, 0.1, "the gateway to be ready")
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("vidmesh up exited:\n" + "\n".join(self.lines[-50:]))
        try:
            if httpx.get(self.url + "/readyz", timeout=1).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        # every service has said it is ready
        return sum(" ready" in line for line in self.lines if "INFO" in line) >= self.expected_services()

    def expected_services(self) -> int:
        procs = int(self.env.get("VIDMESH_TRANSCODER_PROCS", "2"))
        return 4 + procs

    def child_pids(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := re.search(r"started pid=(\d+)", line))]

    def client(self, tenant: str = "alice", **kw) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.KEYS[tenant]}"}, timeout=60, **kw
        )

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-e2e-") as tmp:
        m = Mesh(Path(tmp)).start()
        yield m
        pids = m.child_pids()
        assert m.stop() == 0, "\n".join(m.lines[-40:])
        wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")

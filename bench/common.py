"""What every benchmark shares: a mesh on loopback, RSS sampling, statistics, results."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1024 * 1024
GiB = 1024 * MiB

# Wide tables when the output is a file or a pipe (make bench | tee ...), not 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)

# The benchmark process itself never exports spans.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")


# --- the mesh --------------------------------------------------------------------------------


@contextmanager
def running_mesh(extra_env: dict | None = None, *, label: str = "mesh"):
    """`vidmesh up` on 127.0.0.1 free ports in a temporary data dir; always stopped."""
    from tests.conftest import Mesh  # the same helper the e2e tests use

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-") as tmp:
        with console.status(f"starting {label} (vidmesh up)"):
            # INFO logging stays on: Mesh.ready() counts the services' " ready" lines.
            mesh = Mesh(Path(tmp), extra_env)
            started = time.monotonic()
            mesh.start()
        console.log(f"{label} ready in {time.monotonic() - started:.1f}s (gateway {mesh.url}, nats :{mesh.nats_port})")
        try:
            yield mesh
        finally:
            with console.status(f"stopping {label}"):
                mesh.stop()


def service_line(mesh, service: str) -> re.Match:
    """The supervisor's `started pid=N http=:PORT` line of one service (last start wins)."""
    pattern = re.compile(rf"^{re.escape(service)}\s*\| started pid=(\d+) http=:(\d+)")
    found = None
    for line in list(mesh.lines):
        m = pattern.match(line)
        if m:
            found = m
    if found is None:
        raise RuntimeError(f"no 'started pid=' line for {service} in the mesh output")
    return found


def service_pid(mesh, service: str) -> int:
    return int(service_line(mesh, service).group(1))


def service_port(mesh, service: str) -> int:
    return int(service_line(mesh, service).group(2))


# --- memory ----------------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs permission on the process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of one process every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic() - t0, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_kib(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def first_kib(self) -> int:
        return self.samples[0][1] if self.samples else 0


# --- statistics and results ------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def environment() -> dict:
    import av

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "pyav": av.__version__,
        "pyav_ffmpeg": getattr(av, "ffmpeg_version_info", None),
    }
    try:
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(), **data}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]n/a[/]"
    return "[bold green]met[/]" if ok else "[bold red]MISSED[/]"


def python() -> str:
    return sys.executable

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
from rich.table import Table

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


def mesh_processes(mesh) -> dict[str, int]:
    """name -> pid of every process `vidmesh up` started (nats included; last start wins)."""
    found = {}
    for line in list(mesh.lines):
        m = re.match(r"^(\S+)\s*\| started pid=(\d+)", line)
        if m:
            found[m.group(1)] = int(m.group(2))
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

    def __enter__(self) -> RssSampler:
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


# --- CPU time and placement -----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) plus those of its reaped children (the
    pipeline's probe runs in a child process), in seconds; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat: everything but
    idle and iowait) since boot."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class OtherWork:
    """How much CPU the rest of the machine (not the measured processes, not this bench)
    used during a measurement: the machine's busy time minus what we account for. As a share
    of the machine over the wall time it says how loaded a run was, better than the load
    average (which counts runnable threads, ours included)."""

    def __enter__(self) -> OtherWork:
        self.t0, self.busy0, self.own0 = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.busy = machine_busy_seconds() - self.busy0
        self.own = own_cpu_seconds() - self.own0

    def result(self, measured_cpu: float) -> dict:
        other = max(0.0, self.busy - self.own - measured_cpu)
        return {
            "other_cpu_seconds": round(other, 2),
            "other_share": round(other / (self.wall * (os.cpu_count() or 1)), 3) if self.wall else None,
        }


def wait_for_quiet(label: str = "") -> dict:
    """With BENCH_QUIET_S=N set, wait up to N seconds until the rest of the machine is quiet
    (its CPU use over 3 s below BENCH_QUIET_SHARE of the machine, default 0.15) before a
    timed run, so runs compared with each other meet similar conditions. Returns what it
    waited and the share it saw last; without BENCH_QUIET_S it returns at once."""
    limit = float(os.environ.get("BENCH_QUIET_S") or 0)
    if limit <= 0:
        return {}
    threshold = float(os.environ.get("BENCH_QUIET_SHARE") or 0.15)
    started = time.perf_counter()
    while True:
        with OtherWork() as probe:
            time.sleep(3)
        share = probe.result(0.0)["other_share"] or 0.0
        waited = time.perf_counter() - started
        if share < threshold or waited >= limit:
            if share >= threshold:
                console.log(
                    f"[yellow]{label}: the machine is still busy ({share:.0%} of it) after {waited:.0f} s; going on[/]"
                )
            return {"quiet_wait_s": round(waited, 1), "busy_share_before": round(share, 3)}
        console.log(f"{label}: other work uses {share:.0%} of the machine; waiting for it to settle")


def pin(pid: int, cpus: set[int]) -> int:
    """Set the CPU affinity of every thread of a process (sched_setaffinity on a pid only
    moves its main thread; threads started later inherit from the thread that starts them).
    Returns the threads moved."""
    moved = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            moved += 1
        except OSError:
            pass  # a thread that just ended
    return moved


def affinity_of(pid: int) -> list[int]:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return []


# --- clips -----------------------------------------------------------------------------------

_CLIPS: dict[tuple, str] = {}
_CLIP_DIR: tempfile.TemporaryDirectory | None = None


def clip(seconds: float, width: int = 1920, height: int = 1080, fps: int = 30, gop: int | None = None) -> str:
    """The path of a generated H.264+AAC clip (tests.clips.make_clip) with a keyframe every
    second, as phones and cameras record (x264's own default, one every 8.3 s, would make
    every chunk decode up to 8 s of picture it then drops: not what uploads look like). Set
    BENCH_SOURCE_GOP_FRAMES (e.g. 250) to measure another GOP; `gop` (frames) fixes it for
    a benchmark whatever that says. Made once per `python -m bench` process and shared by
    the benchmarks that use the same one."""
    global _CLIP_DIR
    from tests.clips import make_clip

    gop = gop or int(os.environ.get("BENCH_SOURCE_GOP_FRAMES") or fps)
    key = (seconds, width, height, fps, gop)
    if key not in _CLIPS:
        if _CLIP_DIR is None:
            _CLIP_DIR = tempfile.TemporaryDirectory(prefix="vidmesh-bench-clips-")
        path = os.path.join(_CLIP_DIR.name, f"{width}x{height}-{fps}-{seconds:g}s-gop{gop}.mp4")
        with console.status(f"generating a {seconds:g} s {width}x{height} {fps} fps H.264+AAC clip (GOP {gop})"):
            t0 = time.perf_counter()
            make_clip(path, width=width, height=height, seconds=seconds, fps=fps, audio=True, gop=gop)
        console.log(
            f"clip {seconds:g} s {width}x{height} GOP {gop}: {os.path.getsize(path) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s"
        )
        _CLIPS[key] = path
    return _CLIPS[key]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- statistics and results ------------------------------------------------------------------


def rate_figures(ready: int, wall: float, tasks: int, ttr: list[float]) -> dict:
    """Videos/min and tasks/s over `wall` seconds, and the time-to-ready percentiles (s)."""
    return {
        "videos_per_min": round(ready / wall * 60, 1),
        "tasks_completed": tasks,
        "tasks_per_s": round(tasks / wall, 2),
        "ttr_p50_s": round(percentile(ttr, 50), 2) if ttr else None,
        "ttr_p99_s": round(percentile(ttr, 99), 2) if ttr else None,
        "ttr_max_s": round(max(ttr), 2) if ttr else None,
    }


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
        env["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except OSError:
        env["commit"] = None
    return env


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(), **data}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def figures_table(title: str, columns: tuple[str, ...]) -> Table:
    """A table of measured figures: every column right-justified."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    return table


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]n/a[/]"
    return "[bold green]met[/]" if ok else "[bold red]MISSED[/]"


def python() -> str:
    return sys.executable

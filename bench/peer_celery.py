"""`bench load --peer celery`: the same load against the task-queue design of the pipeline,
Celery 5 + Redis (bench/peer_celery_app.py), run right after the mesh's steady run.

Everything is started here on 127.0.0.1 and stopped again, also on error: Debian's
`redis-server` on a free port without persistence (broker, result backend and the videos'
status), and for each row a fresh `celery worker` on a flushed Redis. The worker is one
process with `--pool prefork --concurrency 2`: two pool processes that each run one task
at a time, the two slots of the mesh's two transcoder processes (`VIDMESH_TRANSCODER_PROCS
=2`, one task each). One worker with two pool processes rather than two workers of one:
a second worker would only add a second parent process (its broker connection, its
timers) doing no media work. Unlike the mesh, whose thumbnailer and probe run in
processes of their own besides the two transcoders, the peer's two slots run every task
(upload and probe, audio, renditions, thumbnail), as the design has it.

Clients behave as bench/load.py's do: 8 threads, each submitting one copy of the clip at a
time the way that design's web front-end does (the bytes written into the video's folder
on the shared disk, then `upload.delay()`); one poller reads every video not yet terminal
every 0.2 s; a video's time to done runs from the first byte written to the first poll
that sees `ready` (the chord's `done` has run). Warm-up clips go through first (not
timed; one per pool process), after the worker answers a ping. Rows: the probe in a fresh
Python per upload (the baseline), in a child forked from a fork server (vidmesh's
`probe_isolated`, as the mesh probes), then inside the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .common import ROOT, console, loadavg, percentile, rate_figures

CONCURRENCY = 2  # pool processes: the mesh's two transcoder slots
QUEUES = "celery,resize,thumbnail,done"  # upload goes to Celery's default queue
PROBES = {
    "process": "celery (probe in a fresh process)",  # the baseline: a Python started per upload
    "child": "celery (probe forked from a fork server)",  # what the mesh does
    "worker": "celery (probe in the worker)",  # unguarded
}
START_TIMEOUT_S = 60  # redis-server answering, the worker answering a ping
WARM_UP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15  # a warm shutdown, then SIGKILL to the worker's process group


def redis_server_binary() -> str:
    """Debian's redis-server; installed with tests/apt-install.sh when missing and possible."""
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0:
        console.log("redis-server is missing: installing Debian's (tests/apt-install.sh redis-server)")
        subprocess.run(
            ["sh", str(ROOT / "tests" / "apt-install.sh"), "redis-server"],
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is missing: install it (sh tests/apt-install.sh redis-server, or make bench)")
    return found


@contextmanager
def redis_server(tmp: str):
    """A redis-server on a free loopback port, no RDB snapshots and no AOF; yields its URL."""
    import redis

    from services.up import free_port

    binary, port = redis_server_binary(), free_port()
    log = open(os.path.join(tmp, "redis.log"), "wb")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
            "--daemonize",
            "no",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        _stop(proc, group=False)
        log.close()


def _ping(app, node: str, deadline: float) -> bool:
    """Whether the worker answers a ping. kombu re-tries a control message's broker
    connection forever (seen once: a broadcast stuck for 15 minutes while Redis answered
    others), so the ping runs on a daemon thread that is given up at `deadline`."""
    answer: list = []
    thread = threading.Thread(
        target=lambda: answer.append(app.control.ping(destination=[node], timeout=0.5)), daemon=True
    )
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
    if thread.is_alive():
        raise RuntimeError(f"no answer to a ping of {node}: the benchmark's broker connection is stuck")
    return bool(answer and answer[0])


@contextmanager
def celery_worker(app, url: str, tmp: str, label: str):
    """One `celery worker` (prefork, CONCURRENCY pool processes, every queue), ready when it
    answers a ping; yields its node name. Stopped with a warm shutdown, then killed."""
    node = f"peer-{uuid.uuid4().hex[:8]}@127.0.0.1"
    log = open(os.path.join(tmp, f"{node.split('@')[0]}.log"), "wb")
    env = {**os.environ, "BENCH_CELERY_REDIS_URL": url, "OTEL_SDK_DISABLED": "true"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.peer_celery_app",
            "worker",
            "--hostname",
            node,
            "--pool",
            "prefork",
            "--concurrency",
            str(CONCURRENCY),
            "--queues",
            QUEUES,
            "--loglevel",
            "WARNING",
            # one worker: no other worker to synchronise with at start (mingle), to follow
            # (gossip) or to send heartbeats to; these save broker round trips, not media work
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the pool processes are stopped with it
    )
    try:
        started = time.monotonic()
        with console.status(f"starting {label}: celery worker {node}"):
            while not _ping(app, node, started + START_TIMEOUT_S):
                if proc.poll() is not None or time.monotonic() > started + START_TIMEOUT_S:
                    raise RuntimeError(f"the celery worker did not start: {Path(log.name).read_text()[-3000:]}")
        console.log(f"{label}: worker {node} ready in {time.monotonic() - started:.1f}s")
        yield node
    finally:
        _stop(proc, group=True)
        log.close()


def _stop(proc: subprocess.Popen, group: bool) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    if group:  # pool processes left behind by a parent that died or would not stop
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def submit(app, media: str, clip: bytes, probe_in: str) -> dict:
    """What the design's front-end does with one upload: write it into the video's folder
    on the shared disk, then queue `upload`. Times are time.perf_counter() seconds."""
    video_id = uuid.uuid4().hex
    started = time.perf_counter()
    folder = os.path.join(media, video_id)
    os.mkdir(folder)
    source = os.path.join(folder, "source.mp4")
    with open(source, "wb") as fh:
        fh.write(clip)
    app.tasks["peer.upload"].delay(video_id=video_id, source=source, probe_in=probe_in)
    return {"id": video_id, "started": started, "accepted": time.perf_counter()}


def poll(store, ids: list[str]) -> dict[str, dict]:
    """The status hash of each video (bytes -> str), in one round trip."""
    from .peer_celery_app import STATUS_KEY

    pipe = store.pipeline(transaction=False)
    for vid in ids:
        pipe.hgetall(STATUS_KEY.format(vid))
    return {vid: {k.decode(): v.decode() for k, v in h.items()} for vid, h in zip(ids, pipe.execute())}


def wait_done(store, vid: str, timeout_s: float) -> str | None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        status = poll(store, [vid])[vid].get("status")
        if status in ("ready", "failed"):
            return status
        time.sleep(0.1)
    return None


def run_load(
    app, store, media: str, clip: bytes, n: int, probe_in: str, clients: int, poll_s: float, timeout_s: float
) -> dict:
    """N submissions from `clients` threads, polled every `poll_s` until every video is
    ready or failed, or `timeout_s` is over. The row has bench/load.py's keys where they apply."""
    label = PROBES[probe_in]
    deadline = time.perf_counter() + timeout_s
    pool = ThreadPoolExecutor(clients, thread_name_prefix="bench-peer-client")
    futures = [pool.submit(submit, app, media, clip, probe_in) for _ in range(n)]
    rows: dict[int, dict] = {}
    final: dict[str, dict] = {}
    done_at: dict[str, float] = {}
    errors: list[str] = []
    t0 = time.perf_counter()
    with console.status(f"{label}: {n} uploads, {clients} clients") as status:
        while time.perf_counter() < deadline:
            for i, f in enumerate(futures):
                if i not in rows and f.done():
                    try:
                        rows[i] = f.result()
                    except Exception as exc:  # a submission that failed: reported, never retried
                        rows[i] = {"error": f"{type(exc).__name__}: {exc}"}
                        errors.append(rows[i]["error"])
            pending = [r["id"] for r in rows.values() if "id" in r and r["id"] not in final]
            if pending:
                for vid, h in poll(store, pending).items():
                    if h.get("status") in ("ready", "failed"):
                        final[vid] = h
                        done_at[vid] = time.perf_counter()
            status.update(f"{label}: {len(rows)}/{n} submitted, {len(final)} terminal")
            if len(rows) == n and len(final) == sum("id" in r for r in rows.values()):
                break
            time.sleep(poll_s)
        timed_out = not (len(rows) == n and len(final) == sum("id" in r for r in rows.values()))
    pool.shutdown(wait=False, cancel_futures=True)

    accepted = [r for r in rows.values() if "id" in r]
    ready = [r for r in accepted if final.get(r["id"], {}).get("status") == "ready"]
    failed = [r for r in accepted if final.get(r["id"], {}).get("status") == "failed"]
    outputs = {r["id"]: json.loads(final[r["id"]].get("outputs", "[]")) for r in ready}
    ttr = [done_at[r["id"]] - r["started"] for r in ready]
    submit_s = [r["accepted"] - r["started"] for r in accepted]
    first = min((r["started"] for r in accepted), default=t0)
    last = max((done_at[r["id"]] for r in ready), default=time.perf_counter())
    wall = max(1e-9, last - first)
    tasks = sum(len(o) for o in outputs.values())  # each rendition and the thumbnail, as the mesh's row counts
    return {
        "label": label,
        "peer": "celery",
        "probe": probe_in,
        "n": n,
        "accepted": len(accepted),
        "submit_errors": errors,
        "ready": len(ready),
        "ready_complete": sum(
            any("rendition" in o for o in out) and any("thumbnail" in o for o in out) for out in outputs.values()
        ),
        "failed": len(failed),
        "failures": [json.loads(final[r["id"]].get("error", "null")) for r in failed][:10],
        "not_terminal": [r["id"] for r in accepted if r["id"] not in final],
        "timed_out": timed_out,
        "ready_share": round(len(ready) / len(accepted), 4) if accepted else 0.0,
        "wall_s": round(wall, 2),  # first byte written -> last ready seen
        **rate_figures(len(ready), wall, tasks, ttr),
        "submit_p50_s": round(percentile(submit_s, 50), 4) if submit_s else None,
        "submit_p99_s": round(percentile(submit_s, 99), 4) if submit_s else None,
    }


@contextmanager
def session():
    """One Redis for every round of a benchmark run (Celery's app keeps its first broker URL
    in cached producer pools, so it is configured once); yields `run(clip, n, ...)`, which
    makes one row per probe placement (PROBES), each on a fresh worker and a flushed Redis."""
    import redis

    from tests.clips import make_clip

    from .peer_celery_app import app, configure

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-celery-") as tmp, redis_server(tmp) as url:
        configure(url)
        store = redis.Redis.from_url(url)
        warm = Path(make_clip(os.path.join(tmp, "warm.mp4"), width=320, height=240, seconds=1.0)).read_bytes()

        def run(clip: bytes, n: int, *, clients: int, poll_s: float, timeout_s: float) -> list[dict]:
            rows = []
            for probe_in in PROBES:
                store.flushall()
                rows.append(one_row(app, store, url, tmp, warm, clip, n, probe_in, clients, poll_s, timeout_s))
            return rows

        try:
            yield run
        finally:
            store.close()
            app.close()  # the app's broker connections and result backend, before redis stops


def one_row(
    app,
    store,
    url: str,
    tmp: str,
    warm: bytes,
    clip: bytes,
    n: int,
    probe_in: str,
    clients: int,
    poll_s: float,
    timeout_s: float,
) -> dict:
    import celery

    label = PROBES[probe_in]
    media = tempfile.mkdtemp(prefix="media-", dir=tmp)  # the shared folder
    try:
        with celery_worker(app, url, tmp, label):
            # one warm-up clip per pool process, at once: each starts its own probe fork
            # server on its first upload, as the mesh's pipeline did in its warm-up
            with console.status(f"{label}: {CONCURRENCY} warm-up clips (not timed)"):
                t = time.perf_counter()
                ids = [submit(app, media, warm, probe_in)["id"] for _ in range(CONCURRENCY)]
                ended = {vid: wait_done(store, vid, WARM_UP_TIMEOUT_S) for vid in ids}
            if set(ended.values()) != {"ready"}:
                raise RuntimeError(f"{label}: the warm-up clips ended {list(ended.values())}: {poll(store, ids)}")
            console.log(f"{label}: warm-up clips ready in {time.perf_counter() - t:.1f}s")
            load = loadavg()
            row = run_load(app, store, media, clip, n, probe_in, clients, poll_s, timeout_s)
    finally:
        shutil.rmtree(media, ignore_errors=True)
    row.update(
        loadavg_at_start=load,
        loadavg_at_end=loadavg(),
        worker={"pool": "prefork", "concurrency": CONCURRENCY, "queues": QUEUES},
        celery=celery.__version__,
        redis_server=store.info("server")["redis_version"],
    )
    console.log(
        f"{label}: {row['ready']}/{row['accepted']} ready ({row['failed']} failed), "
        f"{row['videos_per_min']} videos/min, time to done p50 {row['ttr_p50_s']} s p99 {row['ttr_p99_s']} s, "
        f"{row['tasks_per_s']} tasks/s, wall {row['wall_s']} s"
        + (" [bold red]TIMED OUT[/]" if row["timed_out"] else "")
    )
    return row

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


from services.up import free_port, free_ports  # noqa: E402  (distinct ports in one call)


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
        self.port, self.monitor = free_ports(2)
        self.port = port or self.port
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
        self.http_port, self.nats_port, monitor_port = free_ports(3)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.lines: list[str] = []
        self.env = {
            **os.environ,
            "VIDMESH_DATA_DIR": str(data_dir),
            "VIDMESH_HTTP_PORT": str(self.http_port),
            "VIDMESH_NATS_PORT": str(self.nats_port),
            "VIDMESH_NATS_MONITOR_PORT": str(monitor_port),
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
        return 7 + procs  # catalog, pipeline, thumbnailer, scheduler, notifier, monitor, gateway + transcoders

    @property
    def nats_url(self) -> str:
        """The mesh's NATS as the admin user (`vidmesh up` turns NATS auth on and keeps the
        generated passwords under its data dir): for tests that inspect the bus directly."""
        from shared.permissions import ADMIN, local_passwords

        password = local_passwords(self.data_dir).get(ADMIN)
        auth = f"{ADMIN}:{password}@" if password else ""
        return f"nats://{auth}127.0.0.1:{self.nats_port}"

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


# =========================================================================================
# Fault-test helpers (issue 4: tests/e2e/test_faults.py, test_cluster.py,
# test_bad_media_corpus.py). Generic: a mesh on an existing NATS (one server or a
# cluster), JetStream queries from sync tests, and the delivery invariants every fault
# test checks: each accepted video terminal, each rendition exactly once, queues empty.
# =========================================================================================

TASK_QUEUES = {"TASKS_TRANSCODE": "transcoder", "TASKS_THUMBNAIL": "thumbnailer"}
EVENT_CONSUMERS = ("catalog", "pipeline")  # durable consumers of EVENTS that must not lag


class MeshOn(Mesh):
    """`vidmesh up` on an existing NATS server or cluster (NATS_URL, comma list for a
    cluster): it starts no nats-server of its own."""

    def __init__(self, data_dir: Path, nats_url: str, extra_env: dict | None = None):
        super().__init__(data_dir, extra_env)
        self.env["NATS_URL"] = nats_url  # Mesh drops an inherited NATS_URL; set ours after


def nats_servers(mesh: Mesh) -> list[str]:
    """The NATS seed URLs the mesh uses."""
    url = mesh.env.get("NATS_URL") or mesh.nats_url
    return [u.strip() for u in url.split(",") if u.strip()]


def js_run(servers: list[str], query, timeout: float = 30.0):
    """Run `await query(js)` on a fresh connection to `servers` (a sync test's JetStream)."""
    import asyncio

    import nats

    async def go():
        nc = await nats.connect(
            servers, connect_timeout=2, max_reconnect_attempts=5, reconnect_time_wait=0.2, allow_reconnect=True
        )
        try:
            return await asyncio.wait_for(query(nc.jetstream(timeout=10)), timeout)
        finally:
            await nc.close()

    return asyncio.run(go())


def service_pids(mesh: Mesh) -> dict[str, int]:
    """The latest pid of every supervised process, by its log prefix (`transcoder-1`, ...)."""
    pids = {}
    for line in mesh.lines:
        name, sep, rest = line.partition("|")
        if sep and "started pid=" in rest:
            pids[name.strip()] = int(rest.split("started pid=")[1].split()[0])
    return pids


def wait_terminal(client: httpx.Client, ids, timeout: float = 120.0, statuses=("ready", "failed")) -> dict[str, dict]:
    """Poll every video until each is in `statuses`; on timeout say which are stuck where."""
    ids = list(ids)
    last: dict[str, dict] = {}

    def done():
        for vid in ids:
            if last.get(vid, {}).get("status") in statuses:
                continue
            r = client.get(f"/v1/videos/{vid}")
            last[vid] = r.json() if r.status_code == 200 else {"status": f"http {r.status_code}", "body": r.text}
        return all(last[v].get("status") in statuses for v in ids)

    try:
        wait_for(done, timeout, 0.2, f"{len(ids)} videos to reach {statuses}")
    except AssertionError:
        stuck = {v: {k: last[v].get(k) for k in ("status", "progress", "planned", "renditions", "error")}
                 for v in ids if last.get(v, {}).get("status") not in statuses}
        raise AssertionError(f"not terminal after {timeout}s: {stuck}") from None
    return {v: last[v] for v in ids}


async def delivery_state(js, tenant: str, video_ids) -> dict:
    """What the bus holds for these videos: rendition objects (and whether each is whole),
    event counts per kind, the task queues, and chunks that belong to no live object."""
    from nats.js.errors import NotFoundError

    store = await js.object_store("media")
    try:
        objects = await store.list(ignore_deletes=True)
    except NotFoundError:
        objects = []
    info = await js.stream_info("OBJ_media", subjects_filter="$O.media.C.>")
    chunks = dict(info.state.subjects or {})
    live = {o.name: o for o in objects if not o.deleted}
    live_nuids = {o.nuid for o in live.values()}
    state = {
        "videos": {},
        "orphan_chunk_subjects": sorted(s for s in chunks if s.rsplit(".", 1)[-1] not in live_nuids),
        "queues": {},
    }
    for vid in video_ids:
        prefix = f"{tenant}/{vid}/renditions/"
        renditions = {}
        for name, o in live.items():
            if name.startswith(prefix):
                held = chunks.get(f"$O.media.C.{o.nuid}", 0)
                renditions[name[len(prefix):]] = {"chunks": o.chunks, "chunks_stored": held, "size": o.size}
        events = {}
        for kind in ("transcoder.evt.rendition_transcoded", "thumbnailer.evt.thumbnail_extracted",
                     "pipeline.evt.video_ready", "pipeline.evt.video_failed"):
            ev = await js.stream_info("EVENTS", subjects_filter=f"{kind}.{tenant}.{vid}")
            events[kind.rsplit(".", 1)[-1]] = sum((ev.state.subjects or {}).values())
        state["videos"][vid] = {"renditions": renditions, "events": events,
                                "thumbnail": f"{tenant}/{vid}/thumbnail.jpg" in live}
    for stream, durable in TASK_QUEUES.items():
        s = await js.stream_info(stream)
        c = await js.consumer_info(stream, durable)
        state["queues"][stream] = {"messages": s.state.messages, "pending": c.num_pending,
                                   "ack_pending": c.num_ack_pending}
    for durable in EVENT_CONSUMERS:
        c = await js.consumer_info("EVENTS", durable)
        state["queues"][f"EVENTS/{durable}"] = {"messages": 0, "pending": c.num_pending,
                                               "ack_pending": c.num_ack_pending}
    return state


def assert_delivered_once(
    mesh: Mesh, tenant: str, finals: dict[str, dict], *, queue_timeout: float = 30.0, reread: bool = False
) -> dict:
    """The invariants of a fault test, over the final JSON of every accepted video (as
    first seen terminal; with `reread`, as read again once the queues have drained):
    - each is `ready`, or `failed` with an error code and message;
    - the JSON lists each rendition name once; a ready video lists exactly its plan;
    - the object store holds exactly one whole object per listed rendition key, and no
      rendition object the JSON does not list (for a ready video); no orphaned chunks;
    - one `rendition_transcoded` event per rendition, one terminal event per video;
    - the TASKS_* work queues end empty and the catalog and pipeline event consumers
      catch up (nothing pending, nothing unacknowledged).
    Returns the bus state it checked."""
    servers = nats_servers(mesh)
    problems = []
    last = {}

    first = {}

    def queues_empty():
        last.update(js_run(servers, lambda js: delivery_state(js, tenant, finals)))
        first.setdefault("queues", last["queues"])
        return all(q == {"messages": 0, "pending": 0, "ack_pending": 0} for q in last["queues"].values())

    try:
        wait_for(queues_empty, queue_timeout, 0.5, "the task queues to drain")
    except AssertionError:
        problems.append(f"task queues not empty: {last.get('queues')}")
    state = {**last, "first_queues": first.get("queues")}
    if reread:
        with mesh.client(tenant) as c:
            finals = {vid: c.get(f"/v1/videos/{vid}").json() for vid in finals}
    for vid, video in finals.items():
        held = state["videos"][vid]
        names = [r["name"] for r in video.get("renditions", [])]
        where = f"video {vid} ({video.get('status')})"
        if len(names) != len(set(names)):
            problems.append(f"{where}: a rendition is listed twice: {names}")
        for name in names:
            obj = held["renditions"].get(f"{name}.mp4")
            if obj is None:
                problems.append(f"{where}: rendition {name} listed but not in the object store")
            elif obj["chunks_stored"] != obj["chunks"]:
                problems.append(f"{where}: rendition {name} object has {obj['chunks_stored']} of {obj['chunks']} chunks")
        ev = held["events"]
        if video.get("status") == "ready":
            if sorted(names) != sorted(video.get("planned", [])):
                problems.append(f"{where}: renditions {names} != planned {video.get('planned')}")
            extra = set(held["renditions"]) - {f"{n}.mp4" for n in names}
            if extra:
                problems.append(f"{where}: rendition objects not listed in the JSON: {sorted(extra)}")
            if ev["rendition_transcoded"] != len(names):
                problems.append(f"{where}: {ev['rendition_transcoded']} rendition_transcoded events for {len(names)} renditions")
            if ev["video_ready"] != 1 or ev["video_failed"] != 0 or ev["thumbnail_extracted"] != 1:
                problems.append(f"{where}: events {ev}")
            if not video.get("thumbnail") or not held["thumbnail"]:
                problems.append(f"{where}: no thumbnail (json {video.get('thumbnail')}, stored {held['thumbnail']})")
        elif video.get("status") == "failed":
            err = video.get("error") or {}
            if not err.get("code") or not err.get("message"):
                problems.append(f"{where}: failed without error code and message: {err}")
            if ev["video_failed"] != 1 or ev["video_ready"] != 0:
                problems.append(f"{where}: terminal events {ev}")
        else:
            problems.append(f"{where}: not terminal")
    if state["orphan_chunk_subjects"]:
        problems.append(f"object chunks that belong to no object: {state['orphan_chunk_subjects']}")
    assert not problems, "\n".join(problems)
    return state

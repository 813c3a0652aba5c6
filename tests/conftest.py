"""Fixtures: a real nats-server on a free port, and the whole mesh started by `vidmesh up`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from services.up import (
    free_ports,  # noqa: E402  (distinct ports in one call)
    nats_server_binary,
)


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until condition() is truthy; return its value (never sleep a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- tools the tests need -------------------------------------------------------------------


def in_ci() -> bool:
    """CI=true (or 1 or yes, in any case) in the environment: every test must run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_tool(tool: str, install: str, why: str = "", untested: str = "") -> NoReturn:
    """A tool some tests need is not there: they skip with a warning in the summary, except
    with CI=true, where they fail, so a CI run cannot pass with those tests not run.
    `tool` names it, `install` says how to get it, `why` what was found instead, and
    `untested` is a loud prefix saying what goes untested (e.g. DASHBOARD NOT TESTED)."""
    message = f"{tool} is missing" + (f" ({why})" if why else "") + f"; to install it: {install}"
    if untested:
        message = f"{untested}: {message}"
    if in_ci():
        pytest.fail(f"{message} [CI=true: a missing tool fails the run instead of skipping it]", pytrace=False)
    warnings.warn(message, UserWarning, stacklevel=2)
    pytest.skip(message)


class NatsServer:
    def __init__(self, store: Path, port: int | None = None):
        self.port, self.monitor = free_ports(2)
        self.port = port or self.port
        self.store = store
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
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
                return (
                    httpx.get(f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true", timeout=1).status_code
                    == 200
                )
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


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    """A nats-server of the test module's own: no module reads streams, buckets or counts
    another left behind (about 0.2 s to start)."""
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

    def start(self) -> Mesh:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            wait_for(self.ready, 60, 0.1, "every process of the mesh to be ready")
        except BaseException:
            self.stop()  # a mesh that never came up must not outlive the test that started it
            raise
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def ready(self) -> bool:
        """Every process `vidmesh up` runs (its `processes.json`) answers its /readyz."""
        if self.proc.poll() is not None:
            raise AssertionError("vidmesh up exited:\n" + "\n".join(self.lines[-50:]))
        try:
            processes = json.loads((self.data_dir / "processes.json").read_text())
        except (OSError, ValueError):
            return False
        try:
            return all(
                p["pid"] and httpx.get(f"http://127.0.0.1:{p['http_port']}/readyz", timeout=1).status_code == 200
                for p in processes.values()
            )
        except httpx.HTTPError:
            return False

    def processes(self) -> dict[str, dict]:
        """{process name: {service, http_port, pid}} as `vidmesh up` last wrote it."""
        return json.loads((self.data_dir / "processes.json").read_text())

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

    def admin_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`vidmesh <args>` as an operator runs it beside this mesh: the admin commands (dlq,
        schedules) on its NATS, with the admin password `vidmesh up` generated."""
        env = {**self.env, "NATS_URL": f"nats://127.0.0.1:{self.nats_port}"}
        return subprocess.run(
            [sys.executable, "-m", "services", *args], env=env, capture_output=True, text=True, timeout=timeout
        )

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


@contextlib.contextmanager
def running_mesh(prefix: str, env: dict | None = None, kind: type[Mesh] = Mesh) -> Iterator[Mesh]:
    """A mesh of its own in a temporary data dir, stopped when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        m = kind(Path(tmp), env).start()
        try:
            yield m
        finally:
            m.stop()


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


@pytest.fixture(scope="module")
def mesh():
    """`vidmesh up` of the test module's own: no module reads videos, queues or counts another
    left behind (about 5 s to start and stop)."""
    with tempfile.TemporaryDirectory(prefix="vidmesh-e2e-") as tmp:
        m = Mesh(Path(tmp)).start()
        yield m
        pids = m.child_pids()
        assert m.stop() == 0, "\n".join(m.lines[-40:])
        wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")


# =========================================================================================
# Fault-test helpers (tests/e2e/test_faults.py, test_cluster.py,
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
    """The latest pid of every supervised process (`transcoder-1`, ...), as `vidmesh up` keeps
    them in its processes.json."""
    return {name: p["pid"] for name, p in mesh.processes().items() if p["pid"]}


def service_ready(mesh: Mesh, name: str) -> bool:
    """Whether one supervised process answers its /readyz."""
    try:
        port = mesh.processes()[name]["http_port"]
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return False


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
        stuck = {
            v: {k: last[v].get(k) for k in ("status", "progress", "planned", "renditions", "error")}
            for v in ids
            if last.get(v, {}).get("status") not in statuses
        }
        raise AssertionError(f"not terminal after {timeout}s: {stuck}") from None
    return {v: last[v] for v in ids}


async def video_events(js, tenant: str, video_id: str, kinds=("*",)) -> list[tuple[int, str, dict]]:
    """Events of one video as (stream seq, kind, payload), in stream order; `kinds` names
    the event kinds (the subject's third token: `chunk_encoded`, ...) or "*" for all."""
    import json

    out = []
    for kind in kinds:
        subject = f"*.evt.{kind}.{tenant}.{video_id}"
        info = await js.stream_info("EVENTS", subjects_filter=subject)
        total = sum((info.state.subjects or {}).values())
        if not total:
            continue
        sub = await js.subscribe(subject, stream="EVENTS", ordered_consumer=True)
        try:
            got = 0
            while got < total:
                msg = await sub.next_msg(timeout=5)
                out.append((msg.metadata.sequence.stream, msg.subject.split(".")[2], json.loads(msg.data)))
                got += 1
        finally:
            await sub.unsubscribe()
    return sorted(out, key=lambda e: e[0])


def mesh_events(mesh: Mesh, tenant: str, video_id: str, kinds=("*",)) -> list[tuple[int, str, dict]]:
    """video_events from a sync test, on the mesh's NATS."""
    return js_run(nats_servers(mesh), lambda js: video_events(js, tenant, video_id, kinds))


def wait_mid_chunk(mesh: Mesh, tenant: str, video_id: str, timeout: float = 60) -> tuple[int, int]:
    """Until a chunk of the video has reported progress (some of its segments encoded) and
    is not encoded yet: (chunk index, segments it reported). Chunks report progress only
    when they have several segments (VIDMESH_CHUNK_S > VIDMESH_SEGMENT_S)."""
    last = []

    def working():
        events = mesh_events(mesh, tenant, video_id, ("chunk_progress", "chunk_encoded"))
        last[:] = events
        encoded = {e["chunk"] for _, kind, e in events if kind == "chunk_encoded"}
        busy = [
            (e["chunk"], e["segments"])
            for _, kind, e in events
            if kind == "chunk_progress" and e["chunk"] not in encoded
        ]
        return busy[-1] if busy else None

    try:
        return wait_for(working, timeout, 0.1, f"a chunk of video {video_id} to be mid-encode")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; events seen: {last}") from None


# Events whose count the delivery invariants check (subject prefixes in EVENTS).
COUNTED_EVENTS = (
    "transcoder.evt.chunk_encoded",
    "transcoder.evt.audio_encoded",
    "transcoder.evt.rendition_stitched",
    "thumbnailer.evt.thumbnail_extracted",
    "pipeline.evt.video_ready",
    "pipeline.evt.video_failed",
)


async def delivery_state(js, tenant: str, video_ids) -> dict:
    """What the bus holds for these videos: rendition objects and CMAF fragments (and
    whether each is whole), the plan and the encode results, event counts per kind, the
    task queues, and chunks that belong to no live object."""
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

    def held(prefix: str) -> dict:
        return {
            name[len(prefix) :]: {
                "chunks": o.chunks,
                "chunks_stored": chunks.get(f"$O.media.C.{o.nuid}", 0),
                "size": o.size,
            }
            for name, o in live.items()
            if name.startswith(prefix)
        }

    for vid in video_ids:
        events = {}
        for kind in COUNTED_EVENTS:
            ev = await js.stream_info("EVENTS", subjects_filter=f"{kind}.{tenant}.{vid}")
            events[kind.rsplit(".", 1)[-1]] = sum((ev.state.subjects or {}).values())
        results = await video_events(js, tenant, vid, ("video_planned", "chunk_encoded", "audio_encoded"))
        state["videos"][vid] = {
            "renditions": held(f"{tenant}/{vid}/renditions/"),
            "fragments": held(f"{tenant}/{vid}/cmaf/"),
            "events": events,
            "plan": next((e for _, kind, e in results if kind == "video_planned"), None),
            "chunks_encoded": [e for _, kind, e in results if kind == "chunk_encoded"],
            "audio_encoded": [e for _, kind, e in results if kind == "audio_encoded"],
            "thumbnail": f"{tenant}/{vid}/thumbnail.jpg" in live,
        }
    for stream, durable in TASK_QUEUES.items():
        s = await js.stream_info(stream)
        c = await js.consumer_info(stream, durable)
        state["queues"][stream] = {
            "messages": s.state.messages,
            "pending": c.num_pending,
            "ack_pending": c.num_ack_pending,
        }
    for durable in EVENT_CONSUMERS:
        c = await js.consumer_info("EVENTS", durable)
        state["queues"][f"EVENTS/{durable}"] = {
            "messages": 0,
            "pending": c.num_pending,
            "ack_pending": c.num_ack_pending,
        }
    return state


def fragment_problems(where: str, held: dict, planned: list[str]) -> list[str]:
    """The CMAF invariants of a ready video: one `chunk_encoded` per planned chunk whose
    segments follow on from each other's; for every rendition (and the audio) an init
    segment and exactly one whole fragment per segment, of the size its result reported,
    and no fragment no result reported (a redone chunk overwrote its keys)."""
    problems = []
    plan, encoded, audio = held["plan"] or {}, held["chunks_encoded"], held["audio_encoded"]
    indices = sorted(e["chunk"] for e in encoded)
    if indices != list(range(plan.get("chunks", 0))):
        problems.append(f"{where}: chunk_encoded for chunks {indices}, planned {plan.get('chunks')}")
    segments = sorted((s for e in encoded for s in e["segments"]), key=lambda s: s["index"])
    if [s["index"] for s in segments] != list(range(len(segments))) or not segments:
        problems.append(f"{where}: segments {[s['index'] for s in segments]} are not 0..n-1, each once")
    expected = {}
    for name in planned:
        expected[f"{name}/init.mp4"] = None
        for s in segments:
            expected[f"{name}/{s['index']:05d}.m4s"] = s["sizes"].get(name)
    if len(audio) != (1 if plan.get("audio") else 0):
        problems.append(f"{where}: {len(audio)} audio_encoded events (audio planned: {plan.get('audio')})")
    for e in audio:
        expected["audio/init.mp4"] = None
        for s in e["segments"]:
            expected[f"audio/{s['index']:05d}.m4s"] = s["sizes"].get("audio")
    stored = held["fragments"]
    if set(stored) != set(expected):
        problems.append(
            f"{where}: fragments missing {sorted(set(expected) - set(stored))[:10]}, "
            f"unreported {sorted(set(stored) - set(expected))[:10]}"
        )
    for key, size in expected.items():
        obj = stored.get(key)
        if obj is None:
            continue
        if obj["chunks_stored"] != obj["chunks"]:
            problems.append(f"{where}: fragment {key} has {obj['chunks_stored']} of {obj['chunks']} chunks")
        if size is not None and obj["size"] != size:
            problems.append(f"{where}: fragment {key} holds {obj['size']} bytes, its result reported {size}")
    return problems


def assert_delivered_once(
    mesh: Mesh, tenant: str, finals: dict[str, dict], *, queue_timeout: float = 30.0, reread: bool = False
) -> dict:
    """The invariants of a fault test, over the final JSON of every accepted video (as
    first seen terminal; with `reread`, as read again once the queues have drained):
    - each is `ready`, or `failed` with an error code and message;
    - the JSON lists each rendition name once; a ready video lists exactly its plan;
    - the object store holds exactly one whole object per listed rendition key, and no
      rendition object the JSON does not list (for a ready video); no orphaned chunks;
    - a ready video's CMAF fragments are exactly those its chunk and audio results report,
      each whole and once (fragment_problems);
    - one `chunk_encoded` per chunk, one `rendition_stitched` per rendition, one terminal
      event per video;
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
                problems.append(
                    f"{where}: rendition {name} object has {obj['chunks_stored']} of {obj['chunks']} chunks"
                )
        ev = held["events"]
        if video.get("status") == "ready":
            if sorted(names) != sorted(video.get("planned", [])):
                problems.append(f"{where}: renditions {names} != planned {video.get('planned')}")
            extra = set(held["renditions"]) - {f"{n}.mp4" for n in names}
            if extra:
                problems.append(f"{where}: rendition objects not listed in the JSON: {sorted(extra)}")
            if ev["rendition_stitched"] != len(names):
                problems.append(
                    f"{where}: {ev['rendition_stitched']} rendition_stitched events for {len(names)} renditions"
                )
            problems += fragment_problems(where, held, names)
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

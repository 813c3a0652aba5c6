"""The delivery machinery under faults, against real processes.

A worker SIGKILLed in the middle of a chunk, a worker SIGTERMed in the middle of a chunk
(bounded drain, exit 0), and the nats-server itself stopped or crashed and restarted under
a running pipeline: every accepted video still ends `ready`, each rendition exists exactly
once (listed once in the JSON, one whole object in the store, one `rendition_stitched`
event), each chunk was encoded once (one `chunk_encoded`; its fragments stored once each,
whole, as reported) and the task queues end empty.

The worker tests share one mesh with a short redelivery delay (`VIDMESH_TASK_ACK_WAIT_S=3`),
a short drain (`VIDMESH_DRAIN_TIMEOUT_S=2`), one transcoder process, so the process
holding a task is unambiguous, and 1 s segments in 4 s chunks, so a 10 s clip is three
chunk tasks that report progress while they encode. The same mesh shows that a catalog
replica dying with an event in hand never lets a video read `ready` without that rendition.
A handler raising `Retry` is covered by tests/integration/test_bus.py; the last test here
covers the other branch, an unexpected exception.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.clips import make_clip
from tests.conftest import (
    Mesh,
    MeshOn,
    NatsServer,
    alive,
    assert_delivered_once,
    delivery_state,
    js_run,
    nats_servers,
    service_pids,
    service_ready,
    wait_for,
    wait_mid_chunk,
    wait_terminal,
)
from tests.conftest import mesh_events as video_events

pytestmark = pytest.mark.e2e

ACK_WAIT_S = 3
DRAIN_S = 2
FAULT_ENV = {
    "VIDMESH_TASK_ACK_WAIT_S": str(ACK_WAIT_S),
    "VIDMESH_DRAIN_TIMEOUT_S": str(DRAIN_S),
    "VIDMESH_TRANSCODER_PROCS": "1",
    "VIDMESH_SEGMENT_S": "1",
    "VIDMESH_CHUNK_S": "4",
}


# --- helpers -------------------------------------------------------------------------------


def upload(client: httpx.Client, path) -> str:
    r = client.post("/v1/videos", content=Path(path).read_bytes(), headers={"Content-Type": "video/mp4"})
    assert r.status_code == 202, (r.status_code, r.text)
    return r.json()["id"]


def wait_transcode_in_hand(mesh, timeout: float = 60) -> None:
    """Until the (single) transcoder holds a task: delivered to it and not yet acked."""

    async def q(js):
        return (await js.consumer_info("TASKS_TRANSCODE", "transcoder")).num_ack_pending

    wait_for(lambda: js_run(nats_servers(mesh), q) >= 1, timeout, 0.02, "the transcoder to hold a task")


def events_last_seq(mesh) -> int:
    async def q(js):
        return (await js.stream_info("EVENTS")).state.last_seq

    return js_run(nats_servers(mesh), q)


def lines_since(mesh, start: int) -> list[str]:
    return mesh.lines[start:]


def pid_of(mesh, name: str) -> int:
    return service_pids(mesh)[name]


def wait_restarted(mesh, name: str, old_pid: int, timeout: float = 30) -> int:
    def restarted():
        pid = service_pids(mesh).get(name)
        if pid in (None, old_pid):
            return None
        return pid if service_ready(mesh, name) else None

    return wait_for(restarted, timeout, 0.1, f"{name} restarted and ready")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-faults-") as tmp:
        m = Mesh(Path(tmp), FAULT_ENV).start()
        yield m
        m.stop()


@pytest.fixture(scope="module")
def clip_720(tmp_path_factory) -> str:
    """1280x720, 10 s: three chunks (0-4, 4-8 and 8-10 s), each encoding three rungs of
    several segments, long enough to catch a worker mid-chunk (and the first chunk takes
    about the drain timeout or longer). MPEG-4 Part 2 is quick to generate (1.6 s) and has
    a keyframe every 12 frames, so the pipeline can cut it."""
    return make_clip(tmp_path_factory.mktemp("faults") / "720.mp4", width=1280, height=720, seconds=10.0, codec="mpeg4")


@pytest.fixture(scope="module")
def clip_small(tmp_path_factory) -> str:
    return make_clip(tmp_path_factory.mktemp("faults") / "small.mp4", width=320, height=240, seconds=1.0)


# --- 1. SIGKILL of each worker kind mid-task -------------------------------------------


def test_sigkill_transcoder_mid_chunk_loses_nothing(fault_mesh, clip_720):
    mesh = fault_mesh
    with mesh.client() as c:
        vid = upload(c, clip_720)
        chunk, segments = wait_mid_chunk(mesh, "alice", vid)
        victim = pid_of(mesh, "transcoder")
        mark = len(mesh.lines)
        os.kill(victim, signal.SIGKILL)
        killed_at = events_last_seq(mesh)
        killed_t = time.monotonic()
        wait_for(lambda: not alive(victim), 10, what="the killed transcoder to be gone")
        wait_restarted(mesh, "transcoder", victim)
        final = wait_terminal(c, [vid], 120)[vid]
        took = time.monotonic() - killed_t

    assert final["status"] == "ready", final
    assert any(re.match(r"transcoder\s+\| exited with -9", line) for line in lines_since(mesh, mark))
    events = video_events(mesh, "alice", vid)
    # The chunk in hand at the kill was encoded after it, by the restarted worker: the task
    # came back (redelivered once its heartbeats stopped) instead of being lost.
    done = [seq for seq, kind, e in events if kind == "chunk_encoded" and e["chunk"] == chunk]
    assert len(done) == 1 and done[0] > killed_at, (chunk, segments, done, killed_at)
    planned = next(e for _, kind, e in events if kind == "video_planned")
    assert planned["chunks"] == 3 and planned["segments"] == 10, planned
    # every chunk's fragments stored once, whole, as its one result reports
    assert_delivered_once(mesh, "alice", {vid: final})
    print(f"killed transcoder at chunk {chunk} ({segments} segments done): ready {took:.1f}s later")


def test_sigkill_thumbnailer_with_a_task_waiting_for_it(fault_mesh, clip_small):
    """The thumbnail takes ~50 ms, too short to catch reliably: freeze the thumbnailer
    (SIGSTOP) before the upload, so its task is either still queued or already delivered
    into the frozen process's outstanding pull, then SIGKILL it. Either way the task must
    not be lost: queued it goes to the restarted worker, in hand it is redelivered after
    ack_wait."""
    mesh = fault_mesh
    victim = pid_of(mesh, "thumbnailer")
    os.kill(victim, signal.SIGSTOP)
    try:
        with mesh.client() as c:
            vid = upload(c, clip_small)

            async def thumb_queue(js):
                s = await js.stream_info("TASKS_THUMBNAIL")
                ci = await js.consumer_info("TASKS_THUMBNAIL", "thumbnailer")
                return (s.state.messages, ci.num_pending, ci.num_ack_pending) if s.state.messages else None

            queued = wait_for(lambda: js_run(nats_servers(mesh), thumb_queue), 30, 0.1, "the thumbnail task queued")
            mark = len(mesh.lines)
            os.kill(victim, signal.SIGKILL)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)  # harmless on a dead process; needed if the kill failed
        except ProcessLookupError:
            pass
    wait_for(lambda: not alive(victim), 10, what="the killed thumbnailer to be gone")
    wait_restarted(mesh, "thumbnailer", victim)
    with mesh.client() as c:
        final = wait_terminal(c, [vid], 60)[vid]
    assert final["status"] == "ready", final
    assert final["thumbnail"], final
    assert any(re.match(r"thumbnailer\s+\| exited with -9", line) for line in lines_since(mesh, mark))
    assert_delivered_once(mesh, "alice", {vid: final})
    in_hand = queued[2] > 0
    print(f"thumbnail task at kill (messages, pending, ack_pending) = {queued}: {'in hand' if in_hand else 'queued'}")


# --- 2. SIGTERM: bounded drain, exit 0, nothing lost -----------------------------------


def test_sigterm_transcoder_mid_chunk_drains_in_time_exits_0_and_loses_nothing(fault_mesh, clip_720):
    """SIGTERM as soon as the transcoder holds its first task (chunk 0: the pipeline
    publishes it first and the work queue is FIFO). The chunk may take longer than the
    drain timeout, so the worker must finish it or give it back (nak) and exit 0 within
    the bound, and the chunk must be encoded exactly once."""
    mesh = fault_mesh
    with mesh.client() as c:
        vid = upload(c, clip_720)
        wait_transcode_in_hand(mesh)
        chunk = 0
        victim = pid_of(mesh, "transcoder")
        mark = len(mesh.lines)
        started = time.monotonic()
        os.kill(victim, signal.SIGTERM)
        stopped_at = events_last_seq(mesh)
        # drain bound: DRAIN_S for the task in hand, then the shell's own close (a few s)
        wait_for(lambda: not alive(victim), DRAIN_S + 10, 0.05, "the transcoder to exit after SIGTERM")
        exit_s = time.monotonic() - started
        exited_at = events_last_seq(mesh)
        exited = wait_for(
            lambda: [line for line in lines_since(mesh, mark) if re.match(r"transcoder\s+\| exited with", line)],
            10,
            what="the supervisor to report the exit",
        )
        wait_restarted(mesh, "transcoder", victim)
        final = wait_terminal(c, [vid], 120)[vid]

    assert "exited with 0;" in exited[0], exited
    assert final["status"] == "ready", final
    # The promise: it finishes or gives back (nak) the task in hand within the drain bound,
    # exits 0, and the chunk is encoded exactly once: either by it before it exited (the
    # encode ended inside the drain window, which a fast machine allows) or, after the
    # exit, by the restarted worker.
    assert exit_s <= DRAIN_S + 10, exit_s
    done = [seq for seq, kind, e in video_events(mesh, "alice", vid, ("chunk_encoded",)) if e["chunk"] == chunk]
    assert len(done) == 1, (chunk, exit_s, done, stopped_at, exited_at)
    if done[0] > exited_at:  # given back: it held the task for the whole drain window first
        assert exit_s >= DRAIN_S - 0.2, exit_s
    assert_delivered_once(mesh, "alice", {vid: final})
    # No traceback from the stopping transcoder: a drain is not a crash.
    dying = [
        line
        for line in lines_since(mesh, mark)
        if line.startswith("transcoder") and ("Traceback" in line or " ERROR " in line)
    ]
    assert not dying, "\n".join(lines_since(mesh, mark)[-40:])
    how = "redone after the exit" if done[0] > exited_at else "finished within the drain"
    print(f"SIGTERM at chunk {chunk}: exited 0 after {exit_s:.1f}s; chunk {chunk} {how}")


# --- 2b. a duplicate delivery of a chunk and of the stitch -------------------------------


@pytest.fixture(scope="module")
def clip_two_chunks(tmp_path_factory) -> str:
    """320x240, 6 s, cuttable: chunks 0-4 and 4-6 s on the fault mesh's 1 s grid."""
    return make_clip(tmp_path_factory.mktemp("faults") / "two.mp4", width=320, height=240, seconds=6.0, codec="mpeg4")


def test_a_duplicate_delivery_of_a_chunk_and_the_stitch_makes_no_duplicate_output(fault_mesh, clip_two_chunks):
    """At-least-once delivery means a task can run twice (a redelivery whose first run did
    finish, a task published again). Running a finished chunk and the stitch of a ready
    video again rewrites the same keys (new objects replace the old ones, whose chunks are
    purged), publishes no second result, and the video stays ready and whole."""
    from services.pipeline import jobs
    from shared import contracts, topology

    mesh = fault_mesh
    servers = nats_servers(mesh)
    with mesh.client() as c:
        vid = upload(c, clip_two_chunks)
        final = wait_terminal(c, [vid], 90)[vid]
    assert final["status"] == "ready", final
    rewritten = [topology.segment_key("alice", vid, "240p", i) for i in (4, 5)]
    rewritten += [topology.rendition_key("alice", vid, "240p")]

    async def nuids(js):
        store = await js.object_store("media")
        return {name: (await store.get_info(name)).nuid for name in rewritten}

    async def again(js):
        kv = await js.key_value("jobs")
        job = jobs.job_decoder.decode((await kv.get(topology.state_key("alice", vid))).value)
        assert [job.tasks[t] for t in ("chunk:1", "stitch")] == ["done", "done"], job.tasks
        for name in ("chunk:1", "stitch"):
            task = jobs.task_message(job, name)
            await js.publish(
                topology.subject_for(task), contracts.encode(task), headers={"Nats-Msg-Id": f"{vid}:{name}:again"}
            )

    async def queued(js):
        info = await js.stream_info("TASKS_TRANSCODE", subjects_filter=f"*.cmd.*.alice.{vid}")
        return sum((info.state.subjects or {}).values())

    before = js_run(servers, nuids)
    js_run(servers, again)
    # both ran (they left the work queue, acknowledged) and replaced their objects
    wait_for(lambda: js_run(servers, queued) == 0, 60, 0.2, "the duplicate tasks to be done")
    after = wait_for(
        lambda: (n := js_run(servers, nuids)) and all(n[k] != before[k] for k in rewritten) and n,
        30,
        0.2,
        "the duplicate tasks to rewrite their objects",
    )
    assert set(after) == set(rewritten)
    with mesh.client() as c:
        assert c.get(f"/v1/videos/{vid}").json()["status"] == "ready"
        download = c.get(final["renditions"][0]["url"])
    assert download.status_code == 200 and len(download.content) == final["renditions"][0]["size"]
    # one result event per chunk and rendition, every fragment once and whole, no orphans
    assert_delivered_once(mesh, "alice", {vid: final}, reread=True)


# --- 3. nats-server restart under a running pipeline -----------------------------------


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_nats_server_restart_mid_pipeline(tmp_path, how):
    """A clean stop (SIGTERM) and a crash (SIGKILL: nothing flushed on the way out; the
    store is fsynced on every write) of the one nats-server, restarted on the same port
    and store while three videos (two chunks each, the audio and the stitch) are being
    processed."""
    server = NatsServer(tmp_path / "nats").start()
    clips = [make_clip(tmp_path / f"c{i}.mp4", width=854, height=480, seconds=6.0, codec="mpeg4") for i in range(3)]
    mesh = MeshOn(tmp_path / "mesh", server.url, FAULT_ENV).start()
    try:
        assert not any(line.startswith("nats ") for line in mesh.lines), "vidmesh up must not start its own nats-server"
        before = service_pids(mesh)
        with mesh.client() as c:
            ids = [upload(c, p) for p in clips]

            def started():
                videos = [c.get(f"/v1/videos/{v}").json() for v in ids]
                # a chunk encoded (progress moved) or a rendition stitched
                return (
                    any(any(p > 0 for p in (v.get("progress") or {}).values()) or v.get("renditions") for v in videos)
                    and videos
                )

            at_stop = wait_for(started, 60, 0.05, "the pipeline to be working")
            # mid-pipeline: some work is left (on a busy machine the first video may be done)
            assert not all(v["status"] == "ready" for v in at_stop), "the restart must land mid-pipeline"
            mark = len(mesh.lines)
            if how == "sigkill":
                server.proc.kill()
                server.proc.wait()
            else:
                server.stop()
            down = time.monotonic()
            server.start()  # same port, same store
            back = time.monotonic() - down

            def ready():
                try:
                    return httpx.get(mesh.url + "/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 30, 0.2, "the gateway ready again")
            try:
                finals = wait_terminal(c, ids, 120)
            except AssertionError as exc:  # the bus's state and what each service did since the stop
                state = js_run(nats_servers(mesh), lambda js: delivery_state(js, "alice", ids))
                videos = {v: c.get(f"/v1/videos/{v}").json() for v in ids}
                raise AssertionError(
                    f"{exc}\n--- bus ---\n{state}\n--- videos ---\n{videos}\n--- mesh output since the stop ---\n"
                    + "\n".join(lines_since(mesh, mark)[-200:])
                ) from None
            took = time.monotonic() - down

        assert [f["status"] for f in finals.values()] == ["ready"] * 3, finals
        # they reconnected by themselves: no process was restarted by the supervisor
        assert service_pids(mesh) == before
        assert not [line for line in lines_since(mesh, mark) if "exited with" in line]
        reconnected = {line.split("|")[0].strip() for line in lines_since(mesh, mark) if "nats reconnected" in line}
        assert {"catalog", "pipeline", "transcoder", "thumbnailer", "gateway"} <= reconnected, reconnected
        checked = time.monotonic()
        state = assert_delivered_once(mesh, "alice", finals, queue_timeout=45)
        checked = time.monotonic() - checked
        busy = {k: q for k, q in state["first_queues"].items() if any(q.values())}
        print(f"queues drained and checked in {checked:.1f}s (not yet caught up when the videos were ready: {busy})")
        print(f"nats-server ({how}) restarted in {back:.1f}s; all ready {took:.1f}s after the stop")
    finally:
        pids = mesh.child_pids()
        code = mesh.stop()
        server.stop()
        wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")
    assert code == 0, "\n".join(mesh.lines[-40:])


def test_an_upload_while_nats_does_not_answer_is_a_503_and_the_mesh_recovers(tmp_path):
    """The nats-server freezes (SIGSTOP: connections stay open, nothing answers) while an
    upload streams in: the client gets a JSON 503 it can retry, not a hang or a bare 500;
    once the server answers again, uploads go through and become ready."""
    server = NatsServer(tmp_path / "nats").start()
    clip = make_clip(tmp_path / "c.mp4", width=320, height=240, seconds=1.0)
    mesh = MeshOn(tmp_path / "mesh", server.url, FAULT_ENV).start()
    try:
        with mesh.client() as c:
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                r = c.post(
                    "/v1/videos",
                    content=Path(clip).read_bytes(),
                    headers={"Content-Type": "video/mp4", "Idempotency-Key": "frozen-1"},
                )
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "unavailable" and int(r.headers["retry-after"]) > 0
            # the retry with the same key is a fresh upload: the first one was never accepted
            again = c.post(
                "/v1/videos",
                content=Path(clip).read_bytes(),
                headers={"Content-Type": "video/mp4", "Idempotency-Key": "frozen-1"},
            )
            assert again.status_code == 202, again.text
            final = wait_terminal(c, [again.json()["id"]], 90)[again.json()["id"]]
        assert final["status"] == "ready", final
        assert not [line for line in mesh.lines if "exited with" in line], "no service died"
    finally:
        code = mesh.stop()
        server.stop()
    assert code == 0, "\n".join(mesh.lines[-40:])


# --- 4. an event consumer replica that dies holding a message ----------------------------


@pytest.fixture(scope="module")
def clip_ladder(tmp_path_factory) -> str:
    """1280x720, 2 s: three rungs (720p, 480p, 360p), the first one a few seconds long."""
    return make_clip(tmp_path_factory.mktemp("faults") / "ladder.mp4", width=1280, height=720, seconds=2.0)


def test_ready_is_not_shown_before_a_rendition_held_by_a_dead_catalog_replica(fault_mesh, clip_ladder):
    """A catalog replica takes the `rendition_stitched` event of one rung and dies before
    acking it (a crash or a lost NATS node with a batch in hand): the event comes back only
    after the consumer's ack_wait. Meanwhile the pipeline completes the video; the catalog
    must not show `ready` with that rendition missing (a client that follows SSE to
    `video_ready` and then downloads the rendition gets 404 "has no rendition (yet)").

    The dying replica is played by this test: the real catalog is frozen (SIGSTOP) so the
    test's pull on the same durable consumer gets the event, which it never acks."""
    mesh = fault_mesh
    catalog = pid_of(mesh, "catalog")
    servers = nats_servers(mesh)
    with mesh.client() as c:
        vid = upload(c, clip_ladder)
        wait_for(lambda: c.get(f"/v1/videos/{vid}").json().get("planned"), 30, 0.05, "the catalog to know the plan")

    async def waiting(js):
        return (await js.consumer_info("EVENTS", "catalog")).num_waiting

    async def grab(js):
        sub = await js.pull_subscribe_bind("catalog", "EVENTS")
        held = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except Exception:  # nothing within the second
                continue
            for m in msgs:
                held.append(m.subject)
                if m.subject.startswith("transcoder.evt.rendition_stitched.") and m.subject.endswith(vid):
                    return held, json.loads(m.data)["rendition"]
        raise AssertionError(f"no rendition event of {vid} within 60 s; held {held}")

    os.kill(catalog, signal.SIGSTOP)
    try:
        # the frozen process's outstanding pull lapses (1 s), so the next events wait for us
        wait_for(lambda: js_run(servers, waiting) == 0, 10, 0.1, "the frozen catalog's pull to lapse")
        held, lost = js_run(servers, grab, timeout=70)  # closes the connection without acking
    finally:
        os.kill(catalog, signal.SIGCONT)
    with mesh.client() as c:
        final = wait_terminal(c, [vid], 60)[vid]
        download = c.head(f"/v1/videos/{vid}/renditions/{lost}")
    names = [r["name"] for r in final["renditions"]]
    print(f"held by the dead replica: {held}; {lost} missing from the ready video? {lost not in names}")
    assert final["status"] == "ready", final
    assert sorted(names) == sorted(final["planned"]), (
        f"video reads ready with renditions {names} of {final['planned']}: {lost} is out for "
        f"redelivery; HEAD of its download: {download.status_code}; full JSON: {final}"
    )
    assert download.status_code == 200, download


# --- 5. a handler that raises an unexpected exception ----------------------------------
# `Retry` (and exhausting it) is covered by tests/integration/test_bus.py; this is the
# other branch of the same code: any unexpected exception is nak'ed with a backoff delay
# and the message comes back, instead of being acked or dropped.


async def test_an_unexpected_handler_exception_is_redelivered_not_lost(nats_server):
    import asyncio

    from services import mesh, provision
    from services.thumbnailer import declaration as thumbnailer_declaration
    from shared import contracts, topology
    from shared.bus import Bus
    from shared.consumer import ConsumerLoop
    from shared.settings import Settings

    settings = Settings.load({"NATS_URL": nats_server.url, "VIDMESH_TASK_ACK_WAIT_S": "2"})
    bus = await Bus.connect(settings, "faults-test")
    try:
        await provision.ensure(bus.js, settings, mesh.consumers())
        attempts = []

        async def flaky(task, delivery):
            attempts.append(delivery.attempt)
            if delivery.attempt == 1:
                raise RuntimeError("a bug the handler did not expect")

        task = contracts.ExtractThumbnail(video_id=f"boom{time.time_ns()}", tenant="t", source="t/x/source")
        await bus.publish(task, msg_id=f"{task.video_id}:thumbnail")
        loop = ConsumerLoop(
            bus, thumbnailer_declaration.TASKS, contracts.ExtractThumbnail, flaky, max_deliver=3, ack_wait_s=2
        )
        run = asyncio.create_task(loop.run())
        try:
            deadline = time.monotonic() + 15
            while len(attempts) < 2:
                assert time.monotonic() < deadline, f"not redelivered: attempts {attempts}"
                await asyncio.sleep(0.05)
        finally:
            await loop.stop(5)
            run.cancel()
        assert attempts == [1, 2]
        # Acknowledged after the second attempt: a work queue drops a message once it is
        # acked. The ack is asynchronous, so poll; and look at this task only (other tests
        # on the same server may leave tasks of their own in the queue).
        from nats.js.errors import NotFoundError

        async def still_queued() -> bool:
            try:
                await bus.js.get_last_msg(topology.TASKS_THUMBNAIL, topology.subject_for(task))
                return True
            except NotFoundError:
                return False

        deadline = time.monotonic() + 10
        while await still_queued():
            assert time.monotonic() < deadline, "the task is still on its work queue: it was never acknowledged"
            await asyncio.sleep(0.1)
    finally:
        await bus.close()

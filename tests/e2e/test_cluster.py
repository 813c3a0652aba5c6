"""The mesh on a 3-node JetStream cluster, losing the work queue's leader mid-run.

Three nats-server processes on 127.0.0.1 form one cluster (`sync_interval: always`);
`vidmesh up` runs against all three seeds with `VIDMESH_REPLICAS=3`. Every stream and
bucket is R3. With several uploads in flight (each cut into two 1 s chunks, plus its audio
and its stitch), the node leading TASKS_TRANSCODE is SIGKILLed: every accepted video still
ends `ready`, each chunk encoded and each rendition stitched exactly once, the task queues
empty, and no service process had to be restarted (they fail over by themselves).

Before that, on the same cluster: an object written to the R3 media
store must read back at once, as the probe reads every upload right after the gateway
stored it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.up import nats_server_binary
from tests.clips import make_clip
from tests.conftest import (
    MeshOn,
    alive,
    assert_delivered_once,
    free_ports,
    js_run,
    nats_servers,
    service_pids,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.e2e

CLUSTER = "vidmesh"
STREAMS = ("EVENTS", "TASKS_TRANSCODE", "TASKS_THUMBNAIL", "DEADLETTER", "KV_videos", "KV_jobs", "OBJ_media")


class Node:
    def __init__(self, name: str, store: Path, ports: list[int]):
        self.name = name
        self.store = store
        self.port, self.monitor, self.route = ports
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, routes: list[int]) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        conf = self.store / "nats.conf"
        conf.write_text(
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor}\n"
            "jetstream {\n"
            f'  store_dir: "{self.store / "js"}"\n'
            "  sync_interval: always\n"
            "}\n"
            "cluster {\n"
            f"  name: {CLUSTER}\n"
            f"  listen: 127.0.0.1:{self.route}\n"
            f"  routes: [{', '.join(f'nats-route://127.0.0.1:{p}' for p in routes)}]\n"
            "}\n"
        )
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def jsz(self) -> dict | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.monitor}/jsz", timeout=1)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.monitor}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    def __init__(self, root: Path, size: int = 3):
        ports = free_ports(3 * size)  # all distinct: client, monitor and route port per node
        self.nodes = [Node(f"n{i}", root / f"n{i}", ports[3 * (i - 1) : 3 * i]) for i in range(1, size + 1)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> Cluster:
        routes = [n.route for n in self.nodes]
        for n in self.nodes:
            n.start(routes)

        def formed():
            # every node healthy and agreeing on a JetStream meta leader with 3 peers
            leaders = set()
            for n in self.nodes:
                jsz = n.jsz()
                meta = (jsz or {}).get("meta_cluster") or {}
                if not n.healthy() or not meta.get("leader") or meta.get("cluster_size") != len(self.nodes):
                    return False
                leaders.add(meta["leader"])
            return len(leaders) == 1

        wait_for(formed, 30, 0.2, "the JetStream cluster to form with a meta leader")
        return self

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def stream_facts(mesh, timeout: float = 30) -> dict:
    """name -> (replicas, leader) of every stream, once each has a leader (after a node
    loss the JetStream API answers only when the meta and stream leaders are elected)."""

    async def q(js):
        facts = {}
        for name in STREAMS:
            info = await js.stream_info(name)
            facts[name] = (info.config.num_replicas, info.cluster.leader if info.cluster else None)
        return facts

    def elected():
        try:
            facts = js_run(nats_servers(mesh), q, timeout=15)
        except Exception:
            return None
        return facts if all(leader for _, leader in facts.values()) else None

    return wait_for(elected, timeout, 0.5, "every stream to have a leader")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


async def test_an_object_reads_back_right_after_it_is_written_on_every_node(cluster):
    """What the gateway and the pipeline do on every upload: write the source, then read it
    at once (the probe). Twelve writers at a time, through all three nodes, so reads are
    also served by followers; rounds of 300 until a read fails or 900 have succeeded."""
    import asyncio
    import os

    from services import mesh, provision
    from shared.bus import Bus
    from shared.settings import Settings

    settings = Settings.load({"NATS_URL": cluster.url, "VIDMESH_REPLICAS": "3"})
    setup = await Bus.connect(settings, "cluster-test")
    await provision.ensure(setup.js, settings, mesh.consumers())
    leader = (await setup.js.stream_info("OBJ_media")).cluster.leader
    await setup.close()
    data = os.urandom(600_000)  # three chunks, like a small upload

    async def upload():
        yield data

    failures: dict[str, list[str]] = {}
    done = 0
    for rnd in range(3):
        buses = [await Bus.connect(settings, "cluster-test", url=n.url) for n in cluster.nodes]

        async def writer(bus, node: str, w: int):
            nonlocal done
            for i in range(25):
                name = f"rw/{rnd}/{w}/{i}/source"
                await bus.media.put_stream(name, upload())
                done += 1
                try:
                    info = await bus.media.info(name)
                    assert b"".join([p async for p in bus.media.read(info)]) == data
                except Exception as exc:
                    failures.setdefault(node, []).append(f"{type(exc).__name__}: {getattr(exc, 'description', exc)}")
                await bus.media.delete(name)  # keep the store (and the disk) small

        try:
            await asyncio.gather(*(writer(buses[w % 3], cluster.nodes[w % 3].name, w) for w in range(12)))
        finally:
            for b in buses:
                await b.close()
        if failures:
            break
    assert not failures, (
        f"OBJ_media leader {leader}; of {done} reads right after the write, these failed, by the node "
        "the client used: " + "; ".join(f"{n}: {len(f)}, e.g. {f[0]}" for n, f in failures.items())
    )


def test_losing_the_task_stream_leader_mid_run_loses_nothing(cluster, tmp_path):
    clips = [
        make_clip(tmp_path / f"c{i}.mp4", width=w, height=h, seconds=2.0, codec="mpeg4")  # cuttable
        for i, (w, h) in enumerate([(854, 480), (640, 360), (854, 480), (640, 360), (854, 480)])
    ]
    mesh = MeshOn(
        tmp_path / "mesh",
        cluster.url,
        {
            "VIDMESH_REPLICAS": "3",
            "VIDMESH_TASK_ACK_WAIT_S": "3",
            "VIDMESH_TRANSCODER_PROCS": "2",
            "VIDMESH_SEGMENT_S": "1",
            "VIDMESH_CHUNK_S": "1",
        },
    )
    try:
        mesh.start()
        assert not any(line.startswith("nats ") for line in mesh.lines), "vidmesh up must not start its own nats-server"

        # every stream and bucket is replicated on all three nodes
        facts = stream_facts(mesh)
        assert {name: r for name, (r, _) in facts.items()} == {name: 3 for name in STREAMS}, facts
        before = service_pids(mesh)

        with mesh.client() as c:
            ids = []
            for p in clips:
                r = c.post("/v1/videos", content=Path(p).read_bytes(), headers={"Content-Type": "video/mp4"})
                assert r.status_code == 202, (
                    f"upload answered {r.status_code} {r.text} (a 502 NotFoundError is the probe failing to "
                    "read the upload back: see test_an_object_reads_back_right_after_it_is_written_on_every_node)\n"
                    + "\n".join(
                        line for line in mesh.lines if line.startswith(("gateway", "pipeline")) and " INFO " not in line
                    )[-3000:]
                )
                ids.append(r.json()["id"])

            def working():
                videos = [c.get(f"/v1/videos/{v}").json() for v in ids]
                # a chunk encoded (progress moved) or a rendition stitched, and work left
                started = any(
                    any(p > 0 for p in (v.get("progress") or {}).values()) or v.get("renditions") for v in videos
                )
                return started and not all(v["status"] == "ready" for v in videos)

            wait_for(working, 60, 0.1, "the pipeline to be working")
            leader = stream_facts(mesh)["TASKS_TRANSCODE"][1]
            victim = cluster.node(leader)
            statuses_at_kill = {v: c.get(f"/v1/videos/{v}").json()["status"] for v in ids}
            killed_t = time.monotonic()
            victim.kill()
            right_after = c.get(f"/v1/videos/{ids[0]}")  # may be a 503 while the gateway fails over

            finals = wait_terminal(c, ids, 150)
            took = time.monotonic() - killed_t

        assert [f["status"] for f in finals.values()] == ["ready"] * len(ids), finals
        # The JSON as first seen `ready` may still miss a rendition whose event the catalog
        # lost in flight with the node (redelivered after its 30 s ack_wait): that is the
        # product bug pinned by test_faults.py::test_ready_is_not_shown_before_a_rendition_
        # held_by_a_dead_catalog_replica. Here the invariants are checked once the queues
        # and event consumers have caught up: nothing lost, nothing twice.
        early = {
            v: (sorted(r["name"] for r in f["renditions"]), f["planned"])
            for v, f in finals.items()
            if len(f["renditions"]) != len(f["planned"])
        }
        assert list(statuses_at_kill.values()).count("ready") < len(ids), "the kill must land mid-run"
        # a new leader for the work queue, still R3 (two of three up: quorum)
        after = stream_facts(mesh)
        assert after["TASKS_TRANSCODE"][1] not in (None, leader), after
        # the services failed over to the surviving nodes by themselves
        assert service_pids(mesh) == before, "a service had to be restarted"
        assert not [line for line in mesh.lines if "exited with" in line]
        assert httpx.get(mesh.url + "/readyz", timeout=5).status_code == 200
        assert_delivered_once(mesh, "alice", finals, queue_timeout=60, reread=True)
        print(f"ready before all renditions were listed (catalog bug): {early or 'none this run'}")
        print(
            f"killed {leader} (TASKS_TRANSCODE leader) with {statuses_at_kill}; all ready {took:.1f}s later; "
            f"a GET right after the kill: {right_after.status_code} {right_after.text[:120]}"
        )
    finally:
        pids = mesh.child_pids() if mesh.proc else []
        code = mesh.stop() if mesh.proc else 0
        wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")
    assert code == 0, "\n".join(mesh.lines[-40:])

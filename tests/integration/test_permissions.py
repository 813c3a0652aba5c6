"""NATS least privilege against a real nats-server.

The server runs with the `authorization` block generated from the declarations (the
same function `vidmesh up` and the committed deploy configs use). Each service connects
as its own user: what it needs works, anything else is refused by the server, which
nats-py reports through error_cb as `nats: permissions violation ...`. The whole mesh
running on these permissions is the e2e suite (`vidmesh up` turns auth on).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import httpx
import nats
import pytest

from services import mesh, nats_auth, up
from services.nats_auth import nats_users_conf
from shared import contracts, permissions, topology
from shared.permissions import ADMIN
from shared.settings import Settings
from tests.conftest import free_ports, wait_for

SERVICES = mesh.names()

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ("deploy/nats/auth.conf", "k8s/base/nats/auth.conf")


def test_committed_deploy_configs_equal_the_generated_one():
    """compose and k8s use the same users and permissions as `vidmesh up`: regenerate with
    `vidmesh nats-config --out deploy/nats/auth.conf --out k8s/base/nats/auth.conf`."""
    generated = nats_users_conf()
    for path in COMMITTED:
        assert (ROOT / path).read_text() == generated, f"{path} is stale: run vidmesh nats-config (see docstring)"


def test_every_service_of_the_mesh_has_its_own_user():
    assert set(nats_auth.users()) == set(SERVICES) | {ADMIN}
    for service in SERVICES:
        perms = nats_auth.permissions(service)
        pub, sub = perms["publish"]["allow"], perms["subscribe"]["allow"]
        assert ">" not in pub and ">" not in sub, service
        assert not any(s.startswith("$JS.API.STREAM.CREATE") or s.startswith("$JS.API.STREAM.DELETE") for s in pub)
        assert not any(s.startswith("$JS.API.CONSUMER.DURABLE") for s in pub), service
        assert sub[0] == f"_INBOX.{service}.>" and "_INBOX.>" not in sub, service


# --- a server with the generated users -------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """nats-server with every vidmesh user (random passwords) and the topology ensured."""
    store = tmp_path_factory.mktemp("nats-auth")
    passwords = {user: secrets.token_urlsafe(16) for user in nats_auth.users()}
    port, monitor = free_ports(2)
    conf = store / "nats.conf"
    conf.write_text(up.nats_config(store, port, monitor, passwords))
    proc = subprocess.Popen(
        [up.nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def healthy():
        try:
            return httpx.get(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 20, what="nats-server healthy")
        url = f"nats://127.0.0.1:{port}"
        settings = Settings.load({"NATS_URL": url})
        asyncio.run(up.ensure_topology(settings, url, passwords[ADMIN]))
        yield url, passwords
    finally:
        proc.terminate()
        proc.wait(10)


class Client:
    """A connection as one user, collecting the permission errors the server sends back."""

    def __init__(self):
        self.errors: list[str] = []
        self.nc = None

    async def connect(self, url: str, user: str | None, password: str | None, inbox: str | None = None):
        async def on_error(exc):
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            url,
            user=user,
            password=password,
            error_cb=on_error,
            allow_reconnect=False,
            inbox_prefix=inbox or permissions.inbox_prefix(user or "anonymous"),
        )
        return self

    async def refused(self, subject: str) -> bool:
        """Whether the server refused a publish to or a subscription on `subject`."""
        await self.nc.flush(timeout=5)
        wanted = f'"{subject.lower()}"'  # the server quotes the subject: ... to "foo.bar"
        for _ in range(50):
            found = [e for e in self.errors if "permissions violation" in e.lower() and wanted in e.lower()]
            if found:
                for e in found:
                    self.errors.remove(e)
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self):
        await self.nc.close()


async def as_user(secured, user: str) -> Client:
    url, passwords = secured
    return await Client().connect(url, user, passwords[user])


async def test_nobody_gets_in_without_a_password(secured):
    url, _ = secured
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(url, user="catalog", password="wrong", allow_reconnect=False, connect_timeout=2)


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_has_what_it_needs_and_nothing_else(secured, service):
    c = await as_user(secured, service)
    try:
        js = c.nc.jetstream(timeout=3)
        # what it needs: its streams, buckets and consumers are visible to it ...
        needs = mesh.declarations()[service]
        await permissions.verify(js, needs)
        for spec in needs.consumes:
            # ... it can pull from its own durable consumers and acknowledge ...
            sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
            try:
                for msg in await sub.fetch(1, timeout=0.3):
                    await msg.ack()
            except nats.errors.TimeoutError:
                pass  # nothing waiting
        if needs.publishes:  # ... and publish what it publishes (core NATS: no stream ack needed)
            subject = needs.publish_subjects()[0].replace(">", "t.v")
            await c.nc.publish(subject, b"{}")
            assert not await c.refused(subject), c.errors
        assert not c.errors, c.errors

        # anything else is refused by the server:
        # - publishing an event that belongs to another service (a forged upload) ...
        if service != "gateway":
            await c.nc.publish("gateway.evt.video_uploaded.alice.x", b"{}")
            assert await c.refused("gateway.evt.video_uploaded.alice.x")
        # - ... changing or deleting the topology ...
        for api in (
            "$JS.API.STREAM.DELETE.EVENTS",
            "$JS.API.STREAM.PURGE.EVENTS",
            "$JS.API.STREAM.CREATE.EVIL",
            "$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.evil",
        ):
            await c.nc.publish(api, b"{}")
            assert await c.refused(api), api
        # - ... reading a bucket it has no business in (the webhooks' signing secrets) ...
        if service != "notifier":
            secret = "$JS.API.DIRECT.GET.KV_webhooks.$KV.webhooks.alice.wh_1"
            await c.nc.publish(secret, b"")
            assert await c.refused(secret)
        # - ... pulling another service's tasks ...
        if service != "transcoder":
            await c.nc.publish("$JS.API.CONSUMER.MSG.NEXT.TASKS_TRANSCODE.transcoder", b"{}")
            assert await c.refused("$JS.API.CONSUMER.MSG.NEXT.TASKS_TRANSCODE.transcoder")
        # - ... listening to everything, or to another service's replies and endpoints.
        for subject in (
            ">",
            "gateway.evt.>",
            "_INBOX.>",
            "_INBOX.gateway.>" if service != "gateway" else "_INBOX.catalog.>",
        ):
            await c.nc.subscribe(subject)
            assert await c.refused(subject), subject
        if service != "catalog":
            await c.nc.subscribe("catalog.rpc.get", queue="q")
            assert await c.refused("catalog.rpc.get")
    finally:
        await c.close()


async def test_a_service_answers_requests_only_through_allow_responses(secured):
    """The catalog may reply to the gateway's request (allow_responses), but not publish
    to the gateway's inbox on its own."""
    gateway = await as_user(secured, "gateway")
    catalog = await as_user(secured, "catalog")
    try:

        async def answer(msg):
            await msg.respond(b"pong")

        await catalog.nc.subscribe(topology.RPC_CATALOG_GET, queue="q", cb=answer)
        await catalog.nc.flush()
        reply = await gateway.nc.request(topology.RPC_CATALOG_GET, b"ping", timeout=5)
        assert reply.data == b"pong"
        await catalog.nc.publish("_INBOX.gateway.forged", b"spoof")
        assert await catalog.refused("_INBOX.gateway.forged")
        assert not gateway.errors, gateway.errors
    finally:
        await gateway.close()
        await catalog.close()


async def test_only_admin_creates_the_topology(secured):
    """Services verify; `vidmesh init` / `vidmesh up` (admin) ensure."""
    url, passwords = secured
    settings = Settings.load({"NATS_URL": url})
    await up.ensure_topology(settings, url, passwords[ADMIN])  # idempotent
    worker = await as_user(secured, "transcoder")
    try:
        await worker.nc.publish("$JS.API.STREAM.UPDATE.TASKS_TRANSCODE", b"{}")
        assert await worker.refused("$JS.API.STREAM.UPDATE.TASKS_TRANSCODE")
    finally:
        await worker.close()


async def test_the_chunked_pipeline_s_subjects_are_open_to_exactly_their_owners(secured):
    """Each kind of transcode task (chunk, audio, stitch) may be published by the pipeline
    alone (fan-out, and re-drive of its stuck jobs), and each transcoder result by the
    transcoder; a worker cannot hand itself work, nor forge another worker's results."""
    tasks = [
        topology.SUBJECTS[k] + ".alice.v1"
        for k in (contracts.EncodeChunk, contracts.EncodeAudio, contracts.StitchRenditions)
    ]
    results = [
        topology.SUBJECTS[k] + ".alice.v1"
        for k in (contracts.ChunkProgress, contracts.ChunkEncoded, contracts.AudioEncoded, contracts.RenditionStitched)
    ]
    clients = {name: await as_user(secured, name) for name in ("pipeline", "scheduler", "transcoder", "thumbnailer")}

    async def allowed(name: str, subjects: list[str]) -> None:
        c = clients[name]
        for subject in subjects:
            await c.nc.publish(subject, b"{}")
        # refusals come back in order: once the last publish is through, so is every other
        assert not await c.refused(subjects[-1]), (name, c.errors)
        assert not [e for e in c.errors if "permissions violation" in e.lower()], (name, c.errors)

    async def refused(name: str, subjects: list[str]) -> None:
        c = clients[name]
        for subject in subjects:
            await c.nc.publish(subject, b"{}")
            assert await c.refused(subject), (name, subject)

    try:
        await allowed("pipeline", tasks)
        await allowed("transcoder", results)
        for name in ("scheduler", "transcoder", "thumbnailer"):
            await refused(name, tasks)
        # the job records and re-drive attempts are the pipeline's alone
        await refused("scheduler", [f"$JS.API.DIRECT.GET.KV_{topology.KV_JOBS}.$KV.{topology.KV_JOBS}.alice.v1"])
        await refused("scheduler", [f"$KV.{topology.KV_PIPELINE}.redrive.alice.v1"])
        for name in ("pipeline", "thumbnailer"):
            await refused(name, results)
    finally:
        for c in clients.values():
            await c.close()

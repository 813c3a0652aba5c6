"""Each service's declaration (services/<name>/declaration.py) against its code: what the
code publishes, requests, serves and consumes must be declared, so a missing entry fails
here rather than as a permission error in production."""

from __future__ import annotations

import ast
import asyncio
import importlib
from pathlib import Path

import pytest

from services import mesh
from shared import topology
from shared.bus import Bus
from shared.contracts import GetVideo, VideoReady
from shared.declaration import ConsumerSpec, Declaration, UndeclaredSubject, matches
from shared.service import Service

ROOT = Path(__file__).resolve().parents[2]
MESSAGE_TYPES = {kind.__name__: kind for kind in topology.SUBJECTS}
SERVICES = mesh.names()


def _code(service: str):
    """Every syntax node of a service's modules (its declaration aside)."""
    for path in sorted((ROOT / "services" / service).rglob("*.py")):
        if path.name != "declaration.py":
            yield from ((path.name, node) for node in ast.walk(ast.parse(path.read_text())))


def _called(node) -> str | None:
    """The name a call calls: `EncodeChunk(...)` and `contracts.EncodeChunk(...)` alike."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return node.func.id
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
    return None


@pytest.mark.parametrize("service", SERVICES)
def test_every_bus_message_a_service_builds_is_declared_as_published(service):
    declaration = mesh.declarations()[service]
    built = {(name, where) for where, node in _code(service) if (name := _called(node)) in MESSAGE_TYPES}
    undeclared = [
        f"{name} ({where})"
        for name, where in sorted(built)
        if not declaration.may_publish(f"{topology.SUBJECTS[MESSAGE_TYPES[name]]}.tenant.video")
    ]
    assert not undeclared, f"{service} builds {', '.join(undeclared)} but its declaration does not publish it"


@pytest.mark.parametrize("service", SERVICES)
def test_every_request_reply_subject_a_service_names_is_declared(service):
    declaration = mesh.declarations()[service]
    named = {
        (node.attr, where)
        for where, node in _code(service)
        if isinstance(node, ast.Attribute) and node.attr.startswith("RPC_")
    }
    undeclared = [
        f"{name} ({where})"
        for name, where in sorted(named)
        if not any(
            matches(p, getattr(topology, name) + ".x") or p == getattr(topology, name)
            for p in declaration.serves + declaration.calls
        )
    ]
    assert not undeclared, f"{service} names {', '.join(undeclared)} but neither serves nor calls it"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_handles_exactly_what_it_declares_it_serves_and_consumes(service):
    module = importlib.import_module(f"services.{service}.service")
    declaration, shell = mesh.declarations()[service], module.service
    assert shell.declaration is declaration
    endpoints = {ep.subject for ep in shell._endpoints}
    # a wildcard is served by per-replica subscriptions (gateway.rpc.release_upload.<instance>)
    assert endpoints == {s for s in declaration.serves if not s.endswith(">")}, "an endpoint without a handler"
    assert {c.spec for c in shell._consumers} == set(declaration.consumes), "a consumer without a handler"


def test_a_handler_for_an_undeclared_endpoint_or_consumer_fails_at_import():
    shell = Service(Declaration("probe-test", "a test", serves=("test.rpc.get",)))
    shell.endpoint("test.rpc.get", GetVideo)  # declared: fine
    with pytest.raises(UndeclaredSubject, match="serves test.rpc.other"):
        shell.endpoint("test.rpc.other", GetVideo)
    with pytest.raises(UndeclaredSubject, match="consumer EVENTS/probe-test"):
        shell.consumer(ConsumerSpec(topology.EVENTS, "probe-test", ("*.evt.>",)), VideoReady)


class _RecordingJetStream:
    def __init__(self):
        self.sent = []

    async def publish(self, subject, data, headers=None):
        self.sent.append(subject)
        return type("Ack", (), {"seq": len(self.sent)})()


class _Connection:
    def __init__(self):
        self.js = _RecordingJetStream()

    def jetstream(self, timeout):
        return self.js


def test_publishing_or_requesting_an_undeclared_subject_fails_before_it_reaches_nats():
    nc = _Connection()
    bus = Bus(
        nc,
        settings=None,
        service="probe-test",
        declaration=Declaration("probe-test", "a test", publishes=(VideoReady,)),
    )
    ready = VideoReady(video_id="v1", tenant="t")
    assert asyncio.run(bus.publish(ready, msg_id="v1:ready")) == 1
    with pytest.raises(UndeclaredSubject, match="publishes catalog.evt.video_ready.t.v1"):
        asyncio.run(bus.publish(ready, msg_id="v1:elsewhere", subject="catalog.evt.video_ready.t.v1"))
    with pytest.raises(UndeclaredSubject, match="calls catalog.rpc.get"):
        asyncio.run(bus.request(topology.RPC_CATALOG_GET, GetVideo(tenant="t", video_id="v1"), VideoReady))
    assert nc.js.sent == [f"{topology.SUBJECTS[VideoReady]}.t.v1"]


def test_subject_patterns_match_as_nats_matches_them():
    assert matches("a.*.c", "a.b.c") and not matches("a.*.c", "a.b.d") and not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c") and not matches("a.>", "a") and matches("a.b", "a.b") and not matches("a.b", "a.b.c")


@pytest.mark.parametrize(
    "service", [s for s in SERVICES if any(d in topology.RPC_TYPES for d in mesh.declarations()[s].serves)]
)
def test_each_endpoint_takes_and_answers_the_types_its_subject_names(service):
    """Callers decode replies with topology.RPC_TYPES, and the AsyncAPI document shows it:
    a handler answering another type would break both."""
    import typing

    shell = importlib.import_module(f"services.{service}.service").service
    for ep in shell._endpoints:
        request, reply = topology.RPC_TYPES[ep.subject]
        assert ep.kind is request, ep.subject
        assert typing.get_type_hints(ep.handler).get("return") is reply, ep.subject

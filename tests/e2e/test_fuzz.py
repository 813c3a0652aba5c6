"""Fuzzing, against a real mesh on loopback, bounded for `make test`:

- schemathesis generates requests for every operation of the gateway's own OpenAPI
  document, with an API key: no 5xx, and every answer (status, content type, headers,
  body) conforms to what the document promises (schemas.py gives each route its response
  schemas). About 20 cases per operation, a few hundred in all.
- undecodable and oversized messages published straight onto the subject of every
  durable consumer: each is terminated and recorded in the DEADLETTER stream, nothing is
  redelivered, and every service stays up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services import mesh
from shared import topology
from tests.conftest import Mesh, js_run, nats_servers, wait_for

pytestmark = pytest.mark.e2e

# tus PATCH bodies (and creation with upload) are raw bytes, like application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


class FuzzMesh(Mesh):
    KEYS = {"fuzz": "key-fuzz-0123456789"}


@pytest.fixture(scope="module")
def fuzz_mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-fuzz-") as tmp:
        m = FuzzMesh(Path(tmp), {"VIDMESH_TRANSCODER_PROCS": "1"}).start()
        yield m
        m.stop()


# Cases per operation: valid requests, and requests that break the schema on purpose.
POSITIVE, NEGATIVE = 14, 8
CHECKS = [
    ignored_auth,  # the same request without (or with a wrong) key must be refused
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_api_answers_what_its_schema_promises(fuzz_mesh):
    """schemathesis's Python API driven by Hypothesis (its pytest plugin does not load on
    pytest 9): every operation, derandomized so a failure reproduces."""
    schema = schemathesis.openapi.from_url(fuzz_mesh.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {FuzzMesh.KEYS['fuzz']}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]
    ran = 0
    for op in operations:
        for mode, examples in ((GenerationMode.POSITIVE, POSITIVE), (GenerationMode.NEGATIVE, NEGATIVE)):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: report, do not minimise
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                nonlocal ran
                ran += 1
                case.call_and_validate(base_url=fuzz_mesh.url, headers=auth, timeout=30, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label  # nothing in it can be made invalid
            except Exception as exc:  # one failure per operation and mode is enough to report
                failures.append(f"{op.label} ({mode.value}): {type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {ran} cases over {len(operations)} operations")
    assert ran >= 200, ran


# --- the bus: poison straight onto every consumer's subjects ------------------------------------

# One subject per durable consumer, in its filter (EVENTS subjects reach several consumers:
# each of them must dead-letter the message on its own).
TARGETS = {
    ("EVENTS", "catalog"): "transcoder.evt.chunk_progress.fuzz.v1",
    ("EVENTS", "pipeline"): "gateway.evt.video_uploaded.fuzz.v2",
    ("EVENTS", "notifier"): "pipeline.evt.video_ready.fuzz.v3",
    (topology.TASKS_TRANSCODE, "transcoder"): "transcoder.cmd.encode_chunk.fuzz.v4",
    (topology.TASKS_THUMBNAIL, "thumbnailer"): "thumbnailer.cmd.extract_thumbnail.fuzz.v5",
    (topology.TASKS_WEBHOOK, "notifier"): "notifier.cmd.deliver_webhook.fuzz.v6",
    (topology.ADVISORIES, "deadletter"): f"{topology.MAX_DELIVERIES_ADVISORY}.{topology.TASKS_TRANSCODE}.fuzz",
    (topology.SCHEDULES, "scheduler"): "scheduler.cmd.tick.fuzz",
    (topology.SCHEDULES, "pipeline"): "pipeline.cmd.tick.fuzz",
    (topology.OPS, "monitor"): "logs.evt.fuzz",
}
POISON = {
    "garbage": b"\xff\xfe\x00 this is not json",
    "wrong_shape": b'{"type": "no.such.message.v1", "video_id": 1}',
    "oversized": b'"' + b"A" * (900 * 1024) + b'"',  # under max_payload (1 MiB), far over any message
}


def test_every_consumer_dead_letters_poison_and_stays_up(fuzz_mesh):
    assert {(s.stream, s.durable) for s in mesh.consumers()} == set(TARGETS), "a consumer without a poison test"
    servers = nats_servers(fuzz_mesh)
    first_line = len(fuzz_mesh.lines)

    async def publish(js):
        for subject in TARGETS.values():
            for name, data in POISON.items():
                await js.publish(subject, data, headers={"Nats-Msg-Id": f"fuzz:{subject}:{name}"})
        # a message over the server's max_payload never gets in at all
        with pytest.raises(Exception, match="(?i)payload"):
            await js._nc.publish("transcoder.cmd.encode_chunk.fuzz.v9", b"x" * (2 * 1024 * 1024))

    js_run(servers, publish)

    async def letters(js):
        info = await js.stream_info(topology.DEADLETTER)
        found: dict[tuple[str, str], list[str]] = {}
        seq = info.state.first_seq
        while seq and seq <= info.state.last_seq:
            try:
                msg = await js.get_msg(topology.DEADLETTER, seq)
            except Exception:
                msg = None
            seq += 1
            h = (msg.headers or {}) if msg else {}
            if h.get("Vidmesh-Dead-Subject") in TARGETS.values():
                key = (h["Vidmesh-Dead-Stream"], h["Vidmesh-Dead-Consumer"])
                found.setdefault(key, []).append(h["Vidmesh-Dead-Reason"])
        return found

    def all_recorded():
        found = js_run(servers, letters)
        return found if all(len(found.get(k, [])) >= len(POISON) for k in TARGETS) else None

    found = wait_for(all_recorded, 60, 0.5, "every poison message in the dead-letter stream")
    for key, reasons in found.items():
        assert all(r.startswith("undecodable") for r in reasons), (key, reasons)

    async def caught_up(js):
        out = {}
        for stream, durable in TARGETS:
            c = await js.consumer_info(stream, durable)
            out[(stream, durable)] = (c.num_ack_pending, c.num_redelivered)
        return out

    def settled():
        state = js_run(servers, caught_up)
        return state if all(unacked == 0 for unacked, _ in state.values()) else None

    state = wait_for(settled, 30, 0.5, "nothing left unacknowledged")
    assert all(redelivered == 0 for _, redelivered in state.values()), state  # terminated, never retried
    with fuzz_mesh.client("fuzz") as c:
        assert c.get("/readyz").status_code == 200
    new = fuzz_mesh.lines[first_line:]
    assert not [line for line in new if "exited with" in line], "a service died"
    assert not [line for line in fuzz_mesh.lines if "Violation" in line], "no service was refused by NATS"


def test_fuzzing_left_the_mesh_healthy(fuzz_mesh):
    with fuzz_mesh.client("fuzz") as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/videos").status_code == 200
    assert not [line for line in fuzz_mesh.lines if "exited with" in line]
    assert not [line for line in fuzz_mesh.lines if "Traceback" in line and "gateway" in line.split("|")[0]]

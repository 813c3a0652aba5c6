"""The bus's AsyncAPI document (services/asyncapi.py): valid for the AsyncAPI project's own
parser (@asyncapi/parser, run with node from tests/asyncapi; `make test` installs it), and
saying what the declarations, streams and contracts say. Without node or the parser the
validation skips with a warning, except with CI=true, where it fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services import asyncapi, mesh
from shared import topology
from shared.contracts import EncodeChunk
from shared.declaration import Declaration
from shared.settings import Settings
from tests.conftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
PARSER = ROOT / "tests" / "asyncapi"
SETTINGS = Settings.load({"VIDMESH_TASK_MAX_DELIVER": "7", "VIDMESH_EVENTS_MAX_AGE_S": "3600", "VIDMESH_REPLICAS": "3"})


@pytest.fixture(scope="module")
def doc() -> dict:
    return asyncapi.document(SETTINGS)


def _channel_pattern(channel: dict) -> str:
    """A channel's address as a NATS pattern: each parameter one token."""
    return ".".join("*" if token.startswith("{") else token for token in channel["address"].split("."))


def _ops(doc: dict, service: str, action: str) -> dict:
    ops = doc["operations"].items()
    return {k: op for k, op in ops if op["tags"] == [{"name": service}] and op["action"] == action}


def test_the_asyncapi_parser_finds_no_error(doc, tmp_path):
    node = shutil.which("node")
    if node is None:
        missing_tool("node", "install Node.js 18 or newer (apt-get install nodejs)", untested="ASYNCAPI NOT VALIDATED")
    if not (PARSER / "node_modules" / "@asyncapi" / "parser").is_dir():
        missing_tool("@asyncapi/parser", "`make test` (npm ci in tests/asyncapi)", untested="ASYNCAPI NOT VALIDATED")
    path = tmp_path / "asyncapi.json"
    path.write_text(asyncapi.render(SETTINGS))
    command = [node, str(PARSER / "parse.mjs"), str(path)]
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert run.stdout, f"the parser printed nothing: {run.stderr}"
    found = json.loads(run.stdout)
    for warning in found["warnings"]:  # shown with -rA or on failure
        print(f"asyncapi warning {warning['code']} at {warning['path']}: {warning['message']}")
    assert found["errors"] == [], json.dumps(found["errors"], indent=2)
    assert run.returncode == 0, run.stderr


def test_the_document_has_its_parts(doc):
    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["nats"]["protocol"] == "nats"
    assert {tag["name"] for tag in doc["info"]["tags"]} == set(mesh.names())


def test_every_message_type_is_a_channel_with_tenant_and_video_parameters(doc):
    addresses = {c["address"]: c for c in doc["channels"].values()}
    for kind, prefix in topology.SUBJECTS.items():
        channel = addresses[f"{prefix}.{{tenant}}.{{video_id}}"]
        assert set(channel["parameters"]) == {"tenant", "video_id"}
        assert list(channel["messages"]) == [kind.__name__]


@pytest.mark.parametrize("service", mesh.names())
def test_every_declared_subject_is_a_channel_and_an_operation(doc, service):
    declaration = mesh.declarations()[service]
    patterns = [_channel_pattern(c) for c in doc["channels"].values() if c["address"] is not None]
    sent = [s for op in _ops(doc, service, "send").values() for s in op["x-subjects"]]
    received = [s for op in _ops(doc, service, "receive").values() for s in op["x-subjects"]]
    for subject in declaration.publish_subjects() + list(declaration.calls) + list(declaration.serves):
        assert any(asyncapi.overlaps(subject, p) for p in patterns), f"{service}: {subject} has no channel"
    for subject in declaration.publish_subjects() + list(declaration.calls):
        assert subject in sent, f"{service} sends on {subject}: no send operation says so"
    for subject in declaration.serves:
        assert subject in received, f"{service} serves {subject}: no receive operation says so"
    for spec in declaration.consumes:
        for subject in spec.filters:
            assert subject in received, f"{service}'s consumer {spec.durable} filters {subject}: no receive operation"


def test_request_reply_operations_have_their_reply(doc):
    op = doc["operations"]["gateway.send.catalog.rpc.get"]
    assert op["action"] == "send"
    reply = doc["channels"][op["reply"]["channel"]["$ref"].rsplit("/", 1)[1]]
    assert set(reply["messages"]) == {"Video", "ServiceError"}
    served = doc["operations"]["catalog.receive.catalog.rpc.get"]
    assert served["reply"] == op["reply"]
    assert served["bindings"]["nats"]["queue"]
    assert "x-jetstream-stream" not in doc["channels"]["catalog.rpc.get"]  # no stream captures an rpc subject


def test_the_encode_chunk_message_has_its_schema(doc):
    message = doc["components"]["messages"]["EncodeChunk"]
    assert message["name"] == "transcoder.encode_chunk.v1"
    schema = doc["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]
    fields = set(EncodeChunk.__struct_fields__)
    assert fields <= set(schema["properties"])
    assert schema["properties"]["type"] == {"enum": ["transcoder.encode_chunk.v1"]}
    assert {"video_id", "tenant", "source", "chunk", "renditions", "segment_s"} <= set(schema["required"])
    chunk = schema["properties"]["chunk"]["$ref"].rsplit("/", 1)[1]
    assert {"index", "start", "end"} <= set(doc["components"]["schemas"][chunk]["properties"])


def test_a_consumer_operation_carries_its_durable_and_delivery_limits(doc):
    op = doc["operations"]["transcoder.receive.transcoder.cmd.encode_chunk"]
    consumer = op["x-jetstream-consumer"]
    assert consumer["durable"] == "transcoder"
    assert consumer["stream"] == topology.TASKS_TRANSCODE
    assert consumer["max_deliver"] == 7  # a media work queue: the settings' value
    assert consumer["ack_policy"] == "explicit" and consumer["ack_wait_s"] == SETTINGS.task_ack_wait_s
    assert consumer["dead_letter_subject"] == "dlq.evt.TASKS_TRANSCODE.transcoder"

    catalog = doc["operations"]["catalog.receive.gateway.evt.video_uploaded"]["x-jetstream-consumer"]
    assert (catalog["durable"], catalog["max_deliver"], catalog["filters"]) == ("catalog", 20, ["*.evt.>"])


def test_a_channel_carries_the_stream_capturing_it(doc):
    events = doc["channels"]["gateway.evt.video_uploaded"]["x-jetstream-stream"]
    assert (events["name"], events["retention"], events["replicas"]) == ("EVENTS", "limits", 3)
    assert (events["max_age_s"], events["duplicate_window_s"]) == (3600, 120)
    tasks = doc["channels"]["transcoder.cmd.encode_chunk"]["x-jetstream-stream"]
    assert (tasks["name"], tasks["retention"]) == ("TASKS_TRANSCODE", "workqueue")


def test_a_declared_subject_without_a_channel_is_refused():
    build = asyncapi._Builder(SETTINGS)
    stray = Declaration("stray", "publishes what no channel carries", publishes=("stray.evt.thing.>",))
    with pytest.raises(asyncapi.Unplaced, match="stray.evt.thing"):
        build.service("stray", stray)


def test_the_gateway_serves_what_the_cli_prints(tmp_path, monkeypatch):
    out = tmp_path / "asyncapi.json"

    def vidmesh(*args):
        command = [sys.executable, "-m", "services", *args]
        return subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)

    wrote = vidmesh("asyncapi", "--out", str(out))
    assert wrote.returncode == 0, wrote.stderr
    assert vidmesh("asyncapi").stdout == out.read_text()

    from services.gateway import service as gateway

    renders, render = [], asyncapi.render

    def counted(settings):
        renders.append(settings)
        return render(settings)

    monkeypatch.setattr(gateway, "_asyncapi", None)
    monkeypatch.setattr(gateway.asyncapi, "render", counted)
    client = TestClient(gateway.service.app())  # no lifespan: nothing connects to NATS
    served = client.get("/asyncapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(out.read_text())
    assert client.get("/asyncapi.json").content == served.content
    assert len(renders) == 1  # built once

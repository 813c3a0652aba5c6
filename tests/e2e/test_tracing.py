"""One upload, one trace: an OTLP/HTTP receiver started here collects the spans that every
process of `vidmesh up` exports, and the trace of one POST /v1/videos is checked whole."""

from __future__ import annotations

import tempfile
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.clips import make_clip
from tests.conftest import Mesh, wait_for

pytestmark = pytest.mark.e2e

KIND = {
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
    Span.SPAN_KIND_INTERNAL: "internal",
}


class Collector:
    """A minimal OTLP/HTTP trace receiver: decodes the protobuf export requests."""

    def __init__(self):
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attrs = {}
                    for a in span.attributes:
                        v = a.value
                        attrs[a.key] = v.string_value or v.int_value or v.bool_value or v.double_value
                    with self.lock:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": KIND[span.kind],
                                "attrs": attrs,
                                "events": [e.name for e in span.events],
                            }
                        )

    def trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def traced_mesh():
    collector = Collector()
    env = {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export quickly; the default waits 5 s
        "VIDMESH_TRANSCODER_PROCS": "2",
        "VIDMESH_WEBHOOK_ALLOW_PRIVATE": "1",  # the webhook receiver is on 127.0.0.1
        "VIDMESH_SEGMENT_S": "1",  # 1 s chunks: a 2 s clip is two chunk tasks
        "VIDMESH_CHUNK_S": "1",
    }
    with tempfile.TemporaryDirectory(prefix="vidmesh-traced-") as tmp:
        mesh = Mesh(Path(tmp), env).start()
        yield mesh, collector
        mesh.stop()
        collector.close()


EXPECTED_SERVICES = {
    "vidmesh-gateway",
    "vidmesh-pipeline",
    "vidmesh-transcoder",
    "vidmesh-thumbnailer",
    "vidmesh-catalog",
    "vidmesh-notifier",
}


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 204."""

    def __init__(self):
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_one_upload_is_one_trace_through_every_service(traced_mesh, tmp_path):
    mesh, collector = traced_mesh
    clip = tmp_path / "480.mp4"
    make_clip(str(clip), width=854, height=480, seconds=2.0, codec="mpeg4")  # cuttable: two chunks
    receiver = Receiver()
    with mesh.client() as c:
        hook = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["video.ready"]})
        assert hook.status_code == 201, hook.text
        r = c.post("/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 202
        trace_id = r.headers["x-trace-id"]
        video_id = r.json()["id"]
        assert len(trace_id) == 32
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")

    def complete():
        spans = collector.trace(trace_id)
        services = {s["service"] for s in spans}
        consumed = {
            s["attrs"].get("messaging.destination.name", "").split(".")[2]
            for s in spans
            if s["kind"] == "consumer" and s["service"] == "vidmesh-catalog"
        }
        ids = {s["span_id"] for s in spans}
        settled = all(not s["parent"] or s["parent"] in ids for s in spans)  # batches arrive in any order
        delivered = any(
            s["service"] == "vidmesh-notifier" and "deliver_webhook" in s["name"] and s["kind"] == "consumer"
            for s in spans
        )
        return spans if EXPECTED_SERVICES <= services and "video_ready" in consumed and delivered and settled else None

    try:
        spans = wait_for(complete, 30, 0.2, "every service's spans of the upload's trace")
    except AssertionError:
        spans = collector.trace(trace_id)  # report what is missing below
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if not s["parent"]]
    assert len(roots) == 1 and roots[0]["service"] == "vidmesh-gateway" and roots[0]["kind"] == "server"
    orphans = [s for s in spans if s["parent"] and s["parent"] not in by_id]
    assert orphans == [], f"spans whose parent is not in the trace: {[(o['service'], o['name']) for o in orphans]}"

    kinds = defaultdict(set)
    for s in spans:
        kinds[s["service"]].add(s["kind"])
    assert {"server", "client", "producer"} <= kinds["vidmesh-gateway"]  # HTTP in, probe request, uploaded event
    assert {"server", "consumer", "producer"} <= kinds["vidmesh-pipeline"]  # probe reply, fan-out, fan-in
    assert {"consumer", "producer"} <= kinds["vidmesh-transcoder"]
    assert {"consumer", "producer"} <= kinds["vidmesh-thumbnailer"]
    assert "consumer" in kinds["vidmesh-catalog"]
    assert {"consumer", "producer"} <= kinds["vidmesh-notifier"]  # ready event -> delivery task -> webhook
    assert receiver.bodies and video_id.encode() in receiver.bodies[0]

    # messaging conventions on every send/process span
    for s in spans:
        if s["kind"] in ("producer", "consumer"):
            assert s["attrs"]["messaging.system"] == "nats", s
            assert s["attrs"]["messaging.destination.name"], s
            assert s["name"].split(" ")[0] in ("send", "process"), s
        if s["kind"] == "consumer":
            assert s["attrs"]["messaging.consumer.group.name"], s
            assert s["attrs"]["vidmesh.video.id"] == video_id, s
            assert s["attrs"]["vidmesh.tenant"] == "alice", s
        if s["kind"] == "producer":
            assert s["attrs"]["messaging.message.id"], s

    # each transcoder task (two chunks, the audio, then the stitch of both renditions) is
    # processed in the trace, with its media work as child spans under it
    tasks = defaultdict(list)
    for s in spans:
        if s["kind"] == "consumer" and s["service"] == "vidmesh-transcoder":
            tasks[s["attrs"]["messaging.destination.name"].split(".")[2]].append(s)
    assert {kind: len(found) for kind, found in tasks.items()} == {
        "encode_chunk": 2,
        "encode_audio": 1,
        "stitch_renditions": 1,
    }, tasks
    expected = {
        "encode_chunk": {"encode chunk", "upload fragments"},
        "encode_audio": {"encode audio", "upload fragments"},
        "stitch_renditions": {"stitch", "upload rendition"},
    }
    for kind, found in tasks.items():
        for task in found:
            children = {s["name"] for s in spans if s["parent"] == task["span_id"]}
            assert expected[kind] <= children, (kind, children)
    chunks = sorted(s["attrs"]["vidmesh.chunk"] for s in spans if s["name"] == "encode chunk")
    assert chunks == [0, 1], chunks
    # fan-in: the stitch was sent by the pipeline while it processed the last chunk or audio result
    send = by_id[tasks["stitch_renditions"][0]["parent"]]
    assert send["service"] == "vidmesh-pipeline" and send["kind"] == "producer", send
    assert by_id[send["parent"]]["kind"] == "consumer" and by_id[send["parent"]]["service"] == "vidmesh-pipeline"
    probe = [s for s in spans if s["name"] == "probe"]
    assert probe and by_id[probe[0]["parent"]]["kind"] == "server"

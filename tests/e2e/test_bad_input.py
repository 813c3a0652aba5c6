"""Bad uploads through `vidmesh up`: each one ends cleanly, and the mesh survives.

Every bad input ends either as a clean 4xx at upload (with a stable `code`), or, when some
of it decodes (a file cut short), as a `ready` video of what is there with a `truncated`
warning. Afterwards every service is still up, a good clip still becomes ready, the task
queues drain (no message is redelivered without end) and a poison task is kept in the
dead-letter stream with its reason.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import nats
import numpy as np
import pytest

from tests.clips import make_audio_only, make_clip, make_image, make_truncated
from tests.conftest import alive, mesh_events, service_pids, wait_for

pytestmark = pytest.mark.e2e

TASK_STREAMS = {"TASKS_TRANSCODE": "transcoder", "TASKS_THUMBNAIL": "thumbnailer"}
EVENT_CONSUMERS = ("pipeline", "catalog")


def upload(client: httpx.Client, data, ctype: str = "video/mp4") -> httpx.Response:
    return client.post("/v1/videos", content=data, headers={"Content-Type": ctype})


def wait_status(client: httpx.Client, video_id: str, statuses=("ready", "failed"), timeout=120) -> dict:
    def done():
        body = client.get(f"/v1/videos/{video_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout, 0.2, f"video {video_id} to reach {statuses}")


def listed_ids(client: httpx.Client) -> set[str]:
    return {v["id"] for v in client.get("/v1/videos", params={"limit": 100}).json()["items"]}


def jetstream(mesh, query):
    """Run `await query(js)` against the mesh's own nats-server."""

    async def go():
        nc = await nats.connect(mesh.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            return await query(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type). Content types are ones the gateway accepts for video."""
    d = tmp_path_factory.mktemp("bad")
    text = ("This is a plain text file, not a video.\n" * 200).encode()
    return {
        "random_64k": (np.random.default_rng(1).bytes(64 * 1024), "video/mp4"),
        "random_1_byte": (b"\x8f", "application/octet-stream"),
        "random_600k": (np.random.default_rng(2).bytes(600 * 1024), "video/mp4"),  # spans object chunks
        "text": (text, "video/mp4"),
        "png": (open(make_image(d / "still.png", width=64, height=48), "rb").read(), "video/mp4"),
        "jpeg": (open(make_image(d / "still.jpg", width=64, height=48), "rb").read(), "video/mp4"),
        "audio_only": (open(make_audio_only(d / "tone.m4a", seconds=1.0), "rb").read(), "video/mp4"),
        "truncated": (open(make_truncated(d / "cut.mp4", seconds=4.0, keep=0.5), "rb").read(), "video/mp4"),
        "truncated_in_chunks": (_truncated_in_chunks(d / "cut_in_chunks.mp4"), "video/mp4"),
    }


def _truncated_in_chunks(path) -> bytes:
    """20 s that the pipeline cuts into three 6 s chunks (MPEG-4 Part 2: a keyframe every 12
    frames), index at the front, cut after half its bytes: chunk 0 decodes whole, the
    chunks past the cut cannot. Silent, so only chunks can fail it."""
    make_clip(path, width=320, height=240, seconds=20.0, codec="mpeg4", audio=False, faststart=True, container="mp4")
    data = open(path, "rb").read()
    return data[: len(data) // 2]


# Expected outcome of each bad input: ("reject", status, code) at upload, or ("ready",
# warning code).
EXPECTED = {
    "random_64k": ("reject", 422, "not_media"),
    "random_1_byte": ("reject", 422, "not_media"),
    "random_600k": ("reject", 422, "not_media"),
    "text": ("reject", 422, "not_media"),
    "png": ("reject", 422, "not_media"),
    "jpeg": ("reject", 422, "not_media"),
    "audio_only": ("reject", 422, "no_video_stream"),
    # index at the front, media cut in half: probes fine; what is there becomes the video
    "truncated": ("ready", "truncated"),
    "truncated_in_chunks": ("ready", "truncated"),
}


@pytest.fixture(scope="module")
def outcomes(mesh, bad_files) -> dict:
    """Send every bad input once; remember each answer, and the mesh's processes before."""
    before = service_pids(mesh)
    first_line = len(mesh.lines)
    with mesh.client() as c:
        listing_before = listed_ids(c)
        answers = {name: upload(c, body, ctype) for name, (body, ctype) in bad_files.items()}
        finals = {}
        for name, r in answers.items():
            if r.status_code == 202:
                finals[name] = wait_status(c, r.json()["id"])
    return {"pids": before, "listing": listing_before, "answers": answers, "finals": finals, "first_line": first_line}


def test_empty_body_is_400_empty_body(mesh):
    with mesh.client() as c:
        declared = upload(c, b"")
        assert declared.status_code == 400
        assert declared.json()["code"] == "empty_body"
        # chunked, so no Content-Length tells the gateway in advance
        chunked = upload(c, iter([b""]), "application/octet-stream")
        assert chunked.status_code == 400, chunked.text
        assert chunked.json()["code"] == "empty_body"


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if e[0] == "reject"])
def test_non_video_is_rejected_at_upload_with_a_stable_code(mesh, outcomes, name):
    _, status, code = EXPECTED[name]
    r = outcomes["answers"][name]
    assert r.status_code == status, (name, r.status_code, r.text)
    body = r.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert "location" not in r.headers


def test_rejected_uploads_leave_no_video_behind(mesh, outcomes):
    new = set()
    with mesh.client() as c:
        new = listed_ids(c) - outcomes["listing"]
    accepted = {r.json()["id"] for r in outcomes["answers"].values() if r.status_code == 202}
    assert new == accepted, "only the accepted (truncated) uploads are listed"


def test_a_truncated_mp4_becomes_a_ready_video_of_what_is_there_with_a_warning(mesh, outcomes):
    r = outcomes["answers"]["truncated"]
    assert r.status_code == 202, r.text
    final = outcomes["finals"]["truncated"]
    assert final["status"] == "ready", final
    assert final["error"] is None
    (warning,) = [w for w in final["warnings"] if w["message"].startswith("chunk:")]
    assert warning["code"] == "truncated", final["warnings"]
    assert re.fullmatch(
        r"chunk:0: the video ends at [\d.]+ s of the 4\.0\d s its file declares \([\d.]+ s missing\)",
        warning["message"],
    )
    assert final["renditions"], "what is there is a video"
    with mesh.client() as c:
        for rendition in final["renditions"]:
            assert 0.5 < rendition["duration"] < 3.5, rendition
            got = c.get(f"/v1/videos/{final['id']}/renditions/{rendition['name']}")
            assert got.status_code == 200 and got.content[4:8] == b"ftyp"


def test_chunks_past_the_cut_are_empty_and_the_chunk_at_the_cut_says_how_much_is_missing(mesh, outcomes):
    r = outcomes["answers"]["truncated_in_chunks"]
    assert r.status_code == 202, r.text
    final = outcomes["finals"]["truncated_in_chunks"]
    assert final["status"] == "ready", final
    # the warning names the chunk that holds the cut and how much of the 20 s is missing
    (warning,) = final["warnings"]
    assert warning["code"] == "truncated"
    m = re.fullmatch(
        r"chunk:1: the video ends at ([\d.]+) s of the 20\.00 s its file declares \(([\d.]+) s missing\)",
        warning["message"],
    )
    assert m, warning
    kinds = ("video_planned", "chunk_encoded", "rendition_stitched", "video_ready")
    events = mesh_events(mesh, "alice", final["id"], kinds)
    planned = next(data for _, kind, data in events if kind == "video_planned")
    assert planned["chunks"] == 3 and planned["audio"] is False, planned
    encoded = {data["chunk"]: data for _, kind, data in events if kind == "chunk_encoded"}
    assert sorted(encoded) == [0, 1, 2]
    assert encoded[2]["segments"] == [] and encoded[2]["warnings"] == [], "past the cut: nothing, and no second warning"
    assert encoded[1]["warnings"] == [warning]
    for rendition in final["renditions"]:
        assert rendition["duration"] == pytest.approx(float(m[1]), abs=0.1), rendition


def test_a_poison_task_is_kept_in_the_dead_letter_stream(mesh, outcomes):
    """A chunk task whose source is not in the object store is poison: terminated at once
    (no retry), kept in DEADLETTER with its reason."""
    from shared import topology
    from shared.contracts import ChunkSpan, EncodeChunk, RenditionSpec, encode

    video_id = "01poison0000000000000000000"
    task = EncodeChunk(
        video_id=video_id,
        tenant="alice",
        source=f"alice/{video_id}/source",
        chunk=ChunkSpan(index=0, start=0.0),
        renditions=[RenditionSpec(name="240p", width=320, height=240)],
        segment_s=6.0,
    )

    async def publish(js):
        await js.publish(topology.subject_for(task), encode(task), headers={"Nats-Msg-Id": f"{video_id}:poison"})

    jetstream(mesh, publish)

    async def records(js):
        info = await js.stream_info("DEADLETTER")
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg("DEADLETTER", seq)
            except Exception:
                continue
            headers = msg.headers or {}
            if headers.get("Vidmesh-Dead-Subject", "").endswith(f".{video_id}"):
                found.append(headers)
        return found

    found = wait_for(lambda: jetstream(mesh, records), 30, 0.3, "a dead-letter record of the poison task")
    transcodes = [h for h in found if h.get("Vidmesh-Dead-Stream") == "TASKS_TRANSCODE"]
    assert transcodes, found
    assert "source_missing" in transcodes[0]["Vidmesh-Dead-Reason"], transcodes[0]
    assert transcodes[0]["Vidmesh-Dead-Consumer"] == "transcoder"
    assert transcodes[0]["Vidmesh-Dead-Deliveries"] == "1", "poison is terminated at once, not retried"


def test_mesh_survives_bad_inputs(mesh, outcomes, tmp_path):
    # every service is still the same process: nothing crashed and was restarted
    after = service_pids(mesh)
    assert after == outcomes["pids"], "a service was restarted while handling bad inputs"
    assert all(alive(pid) for pid in after.values()), after
    assert httpx.get(mesh.url + "/readyz", timeout=5).status_code == 200
    logged = mesh.lines[outcomes["first_line"] :]
    crashes = [line for line in logged if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]
    assert not crashes, "bad inputs are refused, not crashed on:\n" + "\n".join(logged[-60:])

    # a good clip still goes all the way through
    clip = make_clip(tmp_path / "good.mp4", width=320, height=240, seconds=1.0)
    with mesh.client() as c:
        r = upload(c, open(clip, "rb").read())
        assert r.status_code == 202, r.text
        final = wait_status(c, r.json()["id"])
    assert final["status"] == "ready", final
    assert [x["name"] for x in final["renditions"]] == ["240p"]


def test_task_queues_drain_and_nothing_is_redelivered_forever(mesh, outcomes):
    async def backlog(js):
        state = {}
        for stream, durable in TASK_STREAMS.items():
            info = await js.stream_info(stream)
            consumer = await js.consumer_info(stream, durable)
            state[stream] = (info.state.messages, consumer.num_pending, consumer.num_ack_pending)
        for durable in EVENT_CONSUMERS:
            consumer = await js.consumer_info("EVENTS", durable)
            state[f"EVENTS/{durable}"] = (0, consumer.num_pending, consumer.num_ack_pending)
        return state

    last = {}

    def drained():
        last.update(jetstream(mesh, backlog))
        return all(v == (0, 0, 0) for v in last.values())

    try:
        wait_for(drained, 60, 0.5, "the task queues and event consumers to drain")
    except AssertionError:
        raise AssertionError(f"not drained (messages, pending, ack pending): {last}") from None

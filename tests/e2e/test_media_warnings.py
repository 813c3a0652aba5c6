"""Damaged and cut-short uploads through `vidmesh up` become `ready` videos with warnings,
and the warnings reach every surface: the video's JSON, its events (SSE) and the webhook
body. An animated GIF becomes a video too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.conftest import Mesh, mesh_events, wait_for
from tests.reference import animation, cut_short, damaged_avi, declare_duration

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def warned_mesh():
    env = {"VIDMESH_WEBHOOK_ALLOW_PRIVATE": "1", "VIDMESH_WEBHOOK_BACKOFF_S": "0.3"}
    with tempfile.TemporaryDirectory(prefix="vidmesh-e2e-warnings-") as tmp:
        m = Mesh(Path(tmp), env).start()
        yield m
        assert m.stop() == 0, "\n".join(m.lines[-40:])


@pytest.fixture(scope="module")
def videos(warned_mesh, receiver, tmp_path_factory):
    """One webhook, then three uploads followed to their end: name -> final video JSON."""
    d = tmp_path_factory.mktemp("uploads")
    cut = make_clip(d / "rec.mkv", seconds=3.0, gop=15)
    declare_duration(cut, 720.0)
    cut_short(cut, 0.9)
    files = {
        "damaged": (damaged_avi(d / "damaged.avi"), "video/x-msvideo"),
        "cut": (cut, "video/x-matroska"),
        "gif": (animation(d, "gif"), "image/gif"),
    }
    finals = {}
    with warned_mesh.client() as c:
        r = c.post("/v1/webhooks", json={"url": receiver.url + "/ok", "events": ["video.ready", "video.failed"]})
        assert r.status_code == 201, r.text
        ids = {}
        for name, (path, _ctype) in files.items():
            r = c.post(
                "/v1/videos", content=Path(path).read_bytes(), headers={"Content-Type": "application/octet-stream"}
            )
            assert r.status_code == 202, (name, r.text)
            ids[name] = r.json()["id"]
        for name, video_id in ids.items():
            finals[name] = wait_for(
                lambda: (v := c.get(f"/v1/videos/{video_id}").json())["status"] in ("ready", "failed") and v,
                120,
                0.3,
                f"{name} to finish",
            )
    return finals


def test_a_damaged_packet_gives_a_ready_video_with_a_warning(videos):
    video = videos["damaged"]
    assert video["status"] == "ready", video
    assert video["warnings"] == [
        {"code": "damaged_packets", "message": "audio: 1 undecodable audio packet was skipped"}
    ]
    assert all(r["duration"] == pytest.approx(6.0, abs=0.1) and r["has_audio"] for r in video["renditions"])


def test_a_recording_cut_short_is_ready_with_what_is_there_and_says_how_much_is_missing(videos):
    video = videos["cut"]
    assert video["status"] == "ready", video
    assert video["source"]["duration"] == pytest.approx(720.0)
    codes = [(w["code"], w["message"].split(":")[0]) for w in video["warnings"]]
    assert codes == [("truncated", "chunk"), ("truncated", "audio")], video["warnings"]
    assert "of the 720.00 s its file declares" in video["warnings"][0]["message"]
    assert all(2.0 < r["duration"] < 3.0 for r in video["renditions"]), video["renditions"]


def test_an_animated_gif_is_a_silent_video(videos):
    video = videos["gif"]
    assert video["status"] == "ready", video
    assert video["source"]["container"] == "gif" and video["warnings"] == []
    assert [(r["width"], r["height"], r["has_audio"]) for r in video["renditions"]] == [(64, 48, False)]
    assert video["renditions"][0]["duration"] == pytest.approx(1.0, abs=0.05)


def test_warnings_are_on_the_events(warned_mesh, videos):
    video = videos["damaged"]
    events = {kind: data for _, kind, data in mesh_events(warned_mesh, "alice", video["id"])}
    assert events["audio_encoded"]["warnings"] == video["warnings"]
    assert events["video_ready"]["warnings"] == video["warnings"]
    # the SSE stream a client follows carries the same data
    seen = {}
    with warned_mesh.client() as c:
        with c.stream("GET", f"/v1/videos/{video['id']}/events") as r:
            kind = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    seen[kind] = json.loads(line.split(":", 1)[1])
    assert seen["video_ready"]["warnings"] == video["warnings"]


def test_warnings_are_in_the_webhook_body(receiver, videos):
    video = videos["damaged"]

    def body():
        for request in receiver.got("/ok"):
            data = json.loads(request["body"])
            if data["type"] == "video.ready" and data["data"]["video"]["id"] == video["id"]:
                return data
        return None

    delivered = wait_for(body, 30, 0.2, "the video.ready webhook")
    assert delivered["data"]["video"]["warnings"] == video["warnings"]

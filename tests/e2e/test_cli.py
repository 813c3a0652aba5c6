"""The `vidmesh` client commands against the real mesh.

The main path and the error path run `vidmesh` as a separate process, exactly as a user
does; the rest invoke the same typer app in-process (a Python start-up per command is
seconds on a loaded 2-core machine), still over HTTP to the real gateway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from types import SimpleNamespace
from urllib.parse import urljoin

import av
import httpx
import m3u8
import pytest
from typer.testing import CliRunner

from services.cli import cli
from services.client import part_path
from tests.clips import make_clip
from tests.conftest import service_pids, wait_for
from tests.e2e.lost_media import lose_source, workers_held

pytestmark = pytest.mark.e2e


def vidmesh(mesh, *args: str, key: str | None = "alice", url: str | None = None, process: bool = False):
    """Run `vidmesh args...`; returns returncode, stdout and stderr."""
    env = {
        "VIDMESH_URL": url or mesh.url,
        "VIDMESH_API_KEY": mesh.KEYS.get(key, key) if key else None,
        "VIDMESH_DATA_DIR": "/nonexistent",  # no dev-key fallback
        "COLUMNS": "200",
    }
    if process:
        full = {k: v for k, v in os.environ.items() if not k.startswith("VIDMESH_")}
        full.update({k: v for k, v in env.items() if v is not None})
        return subprocess.run(
            [sys.executable, "-m", "services", *args], env=full, capture_output=True, text=True, timeout=120
        )
    result = CliRunner().invoke(cli, list(args), env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # what a user would see
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.mp4"
    return make_clip(path, width=640, height=360, seconds=2.0)


@pytest.fixture(scope="module")
def ready_id(mesh, clip):
    """One video uploaded and waited for with the CLI, shared by the read-only tests."""
    result = ok(vidmesh(mesh, "upload", clip, "--wait", "--json"))
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "ready", final
    return final["id"]


def test_upload_wait_shows_progress_and_ends_ready(mesh, clip):
    result = ok(vidmesh(mesh, "upload", clip, "--wait", process=True))
    assert "uploaded small.mp4 -> " in result.stdout
    video_id = result.stdout.split("-> ")[1].split()[0]
    assert f"ready {video_id}: 360p" in result.stdout
    # progress bars (on stderr): the upload, then one per rendition, the audio and the thumbnail
    assert "upload small.mp4" in result.stderr
    bars = {line.split()[1]: line for line in result.stderr.splitlines() if line.startswith(video_id[-8:])}
    assert set(bars) == {"360p", "audio", "thumbnail"}, result.stderr
    assert "100%" in bars["360p"] and "done" in bars["360p"] and "KiB" in bars["360p"]  # its MP4 is stitched
    assert all("100%" in bar and "done" in bar for bar in bars.values())
    assert "Traceback" not in result.stderr


def test_a_video_in_several_chunks_reports_each_chunk(mesh, tmp_path):
    """13 s cut into 6 s chunks: two chunk tasks encode the rendition, one stitch joins them."""
    path = make_clip(tmp_path / "long.mp4", width=320, height=240, seconds=13.0)
    final = json.loads(ok(vidmesh(mesh, "upload", path, "--wait", "--json")).stdout.strip().splitlines()[-1])
    assert final["status"] == "ready" and [r["name"] for r in final["renditions"]] == ["240p"]
    events = [json.loads(line) for line in ok(vidmesh(mesh, "events", final["id"], "--json")).stdout.splitlines()]
    planned = next(e["data"] for e in events if e["event"] == "video_planned")
    assert (planned["chunks"], planned["segments"], planned["segment_s"], planned["audio"]) == (2, 3, 6.0, True)
    encoded = sorted(
        (e["data"]["chunk"], [s["index"] for s in e["data"]["segments"]])
        for e in events
        if e["event"] == "chunk_encoded"
    )
    assert encoded == [(0, [0]), (1, [1, 2])]
    assert [e["data"]["rendition"] for e in events if e["event"] == "rendition_stitched"] == ["240p"]

    tail = ok(vidmesh(mesh, "events", final["id"])).stdout
    assert "240p, 2 chunks, 3 segments of 6 s, audio, thumbnail" in tail
    assert "chunk 0: segments 0-0" in tail and "chunk 1: segments 1-2" in tail
    assert "240p 320x240" in tail and "13.0 s" in tail


def test_download_decodes_and_resumes_by_range(mesh, ready_id, tmp_path):
    target = tmp_path / "out.mp4"
    result = ok(vidmesh(mesh, "download", ready_id, "--rendition", "360p", "-o", str(target), "--json"))
    info = json.loads(result.stdout)
    assert info == {
        "id": ready_id,
        "rendition": "360p",
        "path": str(target),
        "bytes": target.stat().st_size,
        "resumed_from": 0,
    }
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
        frames = sum(1 for _ in container.decode(stream))
    assert frames >= 55  # 2 s at 30 fps

    # an interrupted download leaves a .part named after the ETag; the next run resumes it
    whole = target.read_bytes()
    with mesh.client() as c:
        etag = c.head(f"/v1/videos/{ready_id}/renditions/360p").headers["etag"]
    again = tmp_path / "again.mp4"
    half = len(whole) // 2
    part_path(again, etag).write_bytes(whole[:half])
    result = ok(vidmesh(mesh, "download", ready_id, "-o", str(again), "--json"))  # default: the largest
    assert json.loads(result.stdout)["resumed_from"] == half
    assert again.read_bytes() == whole
    assert not list(tmp_path.glob("*.part"))

    result = ok(vidmesh(mesh, "download", ready_id, "-o", str(tmp_path)))  # a directory
    assert (tmp_path / f"{ready_id}-360p.mp4").read_bytes() == whole
    assert "saved " in result.stdout


def test_ls_status_and_events(mesh, ready_id):
    listing = ok(vidmesh(mesh, "ls"))
    assert ready_id in listing.stdout and "ready" in listing.stdout
    page = json.loads(ok(vidmesh(mesh, "ls", "--json", "--limit", "100")).stdout)
    assert ready_id in [v["id"] for v in page["items"]]

    status = ok(vidmesh(mesh, "status", ready_id))
    assert (
        "ready" in status.stdout
        and "640x360" in status.stdout
        and f"/v1/videos/{ready_id}/renditions/360p" in status.stdout
    )
    video = json.loads(ok(vidmesh(mesh, "status", ready_id, "--json")).stdout)
    assert video["id"] == ready_id and video["renditions"][0]["name"] == "360p"

    lines = ok(vidmesh(mesh, "events", ready_id, "--json")).stdout.strip().splitlines()
    names = [json.loads(line)["event"] for line in lines]
    assert names[0] == "video_uploaded" and names[-1] == "video_ready"
    assert {"video_planned", "chunk_encoded", "audio_encoded", "rendition_stitched", "thumbnail_extracted"} <= set(
        names
    )
    tail = ok(vidmesh(mesh, "events", ready_id))
    assert "rendition_stitched" in tail.stdout and "360p 640x360" in tail.stdout
    assert "chunk 0: segments 0-0, every rendition" in tail.stdout


def test_url_gives_a_link_any_player_opens(mesh, ready_id):
    """`vidmesh url` prints the absolute master playlist URL with a read token: it opens with
    no header (FFmpeg plays it to the end) and `status` shows the playlist's URL."""
    result = ok(vidmesh(mesh, "url", ready_id, process=True))
    link = result.stdout.strip()
    assert result.stdout == link + "\n" and "Traceback" not in result.stderr
    assert link.startswith(f"{mesh.url}/v1/videos/{ready_id}/hls/master.m3u8?token=alice.")
    master = httpx.get(link, timeout=30)
    assert master.status_code == 200 and master.headers["content-type"] == "application/vnd.apple.mpegurl"
    for variant in m3u8.loads(master.text).playlists:
        assert httpx.get(urljoin(link, variant.uri), timeout=30).status_code == 200, variant.uri
    with av.open(link, timeout=30) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert abs(frames - 60) <= 1  # 2 s at 30 fps

    minted = json.loads(ok(vidmesh(mesh, "url", ready_id, "--json")).stdout)
    assert set(minted) == {"url", "expires_at"} and minted["url"].startswith(link.split("?")[0] + "?token=")
    assert time.time() + 3000 < minted["expires_at"] <= time.time() + 3700

    status = ok(vidmesh(mesh, "status", ready_id)).stdout
    assert f"{mesh.url}/v1/videos/{ready_id}/hls/master.m3u8" in status
    assert json.loads(ok(vidmesh(mesh, "status", ready_id, "--json")).stdout)["playable"] is True


def test_url_of_a_video_not_playable_yet_exits_1_with_the_servers_reason(mesh, clip):
    """The transcoders are held (SIGSTOP) while the video is uploaded, so its first segments
    cannot be encoded yet; then it is let go and becomes playable."""
    transcoders = [pid for name, pid in service_pids(mesh).items() if name.startswith("transcoder")]
    for pid in transcoders:
        os.kill(pid, signal.SIGSTOP)
    try:
        video_id = json.loads(ok(vidmesh(mesh, "upload", clip, "--json")).stdout)["id"]
        result = vidmesh(mesh, "url", video_id, process=True)
        assert result.returncode == 1 and result.stdout == "", result
        assert f"not_found: video {video_id} is not playable (yet)" in result.stderr
        assert "Traceback" not in result.stderr
        status = ok(vidmesh(mesh, "status", video_id)).stdout
        assert "/hls/master.m3u8" not in status
    finally:
        for pid in transcoders:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: vidmesh(mesh, "url", video_id).returncode == 0, 60, 0.2, f"video {video_id} to be playable")
    with mesh.client() as c:
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] == "ready", 60, 0.2, "ready")
    assert ok(vidmesh(mesh, "rm", video_id))
    gone = vidmesh(mesh, "url", video_id)
    assert gone.returncode == 1 and "not_found" in gone.stderr


def test_a_failed_video_exits_non_zero_with_its_reason(mesh, clip, tmp_path):
    """The upload is lost from the object store before any task reads it (the workers are
    held meanwhile): the first task to run fails the video, and `upload --wait` says which
    and why. (A truncated upload is no longer a failure: it is ready with a warning.)"""
    lost = tmp_path / f"lost-{uuid.uuid4().hex[:8]}.mp4"
    shutil.copy(clip, lost)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDMESH_")}
    env.update(
        {
            "VIDMESH_URL": mesh.url,
            "VIDMESH_API_KEY": mesh.KEYS["alice"],
            "VIDMESH_DATA_DIR": "/nonexistent",
            "COLUMNS": "200",
        }
    )
    with workers_held(mesh):
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "upload", str(lost), "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with mesh.client() as c:
            video_id = wait_for(
                lambda: next(
                    (
                        v["id"]
                        for v in c.get("/v1/videos", params={"limit": 50}).json()["items"]
                        if v["filename"] == lost.name
                    ),
                    None,
                ),
                60,
                0.1,
                "the upload to be accepted",
            )
        lose_source(mesh, "alice", video_id)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (out, err)
    assert re.search(r"failed \S+: source_missing: (chunk:0|audio|thumbnail): \S", out), out
    assert re.search(r"task (chunk:0|audio|thumbnail) failed: source_missing: ", err), err
    final = json.loads(ok(vidmesh(mesh, "status", video_id, "--json")).stdout)
    assert final["status"] == "failed" and final["error"]["code"] == "source_missing"


def test_a_refused_file_does_not_stop_the_others(mesh, clip, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 100)
    result = vidmesh(mesh, "upload", str(junk), clip, "--json")
    assert result.returncode == 1, result
    assert json.loads(result.stderr)["code"] == "not_media"
    accepted = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["filename"] for v in accepted] == ["small.mp4"]


def test_rm_deletes(mesh, clip):
    video_id = json.loads(ok(vidmesh(mesh, "upload", clip, "--json")).stdout)["id"]
    assert f"deleted {video_id}" in ok(vidmesh(mesh, "rm", video_id)).stdout
    assert json.loads(ok(vidmesh(mesh, "status", video_id, "--json")).stdout)["status"] == "deleted"


def test_errors_show_the_servers_code_and_message_not_a_traceback(mesh, tmp_path, ready_id):
    cases = [
        (("status", "01zzzzzzzzzzzzzzzzzzzzzzzz"), "alice", "not_found"),
        (("ls",), "not-a-key", "unauthorized: missing or invalid API key"),
        (("download", ready_id, "--rendition", "9999p", "-o", str(tmp_path)), "alice", "not_found"),
        (("upload", str(tmp_path / "notes.txt")), "alice", "not_media"),
        (("status", ready_id), "bob", "not_found"),  # another tenant's video
    ]
    (tmp_path / "notes.txt").write_text("not a video\n")
    for args, key, expected in cases:
        result = vidmesh(mesh, *args, key=key)
        assert result.returncode == 1, (args, result)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr

    as_json = vidmesh(mesh, "ls", "--json", key="not-a-key", process=True)
    assert as_json.returncode == 1
    assert json.loads(as_json.stderr) == {"code": "unauthorized", "message": "missing or invalid API key"}

    down = vidmesh(mesh, "ls", url="http://127.0.0.1:9", process=True)  # nothing listens there
    assert down.returncode == 1 and "unreachable" in down.stderr and "Traceback" not in down.stderr

    usage = vidmesh(mesh, "download")
    assert usage.returncode == 2

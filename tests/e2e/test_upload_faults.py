"""Resumable uploads under faults, against the real mesh (`vidmesh up`):

- the gateway SIGKILLed in the middle of a PATCH (its pid from the supervisor): `vidmesh up`
  restarts it, HEAD answers the offset it had stored (everything it received in whole
  chunks before the kill), the client resumes from there, and the video is ready with the
  file's exact bytes;
- tuspy (the tus project's Python client, from PyPI) sends a 200 MB file in one PATCH, the
  connection is cut midway, tuspy resumes from HEAD's offset: ready, same sha256;
- `vidmesh upload` killed mid-upload, then `vidmesh upload --resume` continues from the
  gateway's offset instead of starting over.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from shared.objects import CHUNK_SIZE
from tests.conftest import Mesh, js_run, nats_servers, service_pids, wait_for
from tests.uploads import (
    CuttingProxy,
    create,
    head,
    make_padded_clip,
    patch,
    sha256_file,
    source_sha256,
    wait_ready,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def fmesh():
    env = {"VIDMESH_TRANSCODER_PROCS": "1", "VIDMESH_MAX_UPLOAD_BYTES": str(512 * MiB)}
    with tempfile.TemporaryDirectory(prefix="vidmesh-tusfault-") as tmp:
        m = Mesh(Path(tmp), env).start()
        yield m
        m.stop()


def gateway_ready(mesh) -> bool:
    try:
        return httpx.get(mesh.url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def lock_free(mesh, upload_id: str) -> bool:
    async def get(js):
        kv = await js.key_value("resumable_uploads")
        return json.loads((await kv.get(f"up.alice.{upload_id}")).value)

    return js_run(nats_servers(mesh), get)["lease"] is None


def assert_same_bytes(mesh, video_id: str, path: Path) -> None:
    stored = js_run(nats_servers(mesh), lambda js: source_sha256(js, "alice", video_id), timeout=120)
    assert stored == sha256_file(path)


def test_a_gateway_killed_mid_patch_loses_only_what_it_had_not_stored(fmesh, tmp_path):
    path = Path(make_padded_clip(tmp_path / "kill.mp4", 40 * MiB))
    data = path.read_bytes()
    sent_before_kill = 20 * MiB + 12345  # not on a chunk boundary
    paused, resume = threading.Event(), threading.Event()

    def body():
        for i in range(0, sent_before_kill, 256 * 1024):
            yield data[i : min(i + 256 * 1024, sent_before_kill)]
        paused.set()
        resume.wait(60)  # the gateway is killed while this PATCH waits for more
        yield data[sent_before_kill : sent_before_kill + 1024]

    with fmesh.client() as c:
        url = create(c, len(data)).headers["location"]
        video_id = url.rsplit("/", 1)[1]
        outcome: dict = {}

        def send():
            try:
                outcome["response"] = patch(c, url, 0, body())
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        assert paused.wait(60)
        # what arrived in whole chunks is stored within about a second of the pause
        wait_for(lambda: int(head(c, url).headers["upload-offset"]) >= 20 * MiB, 15, 0.2, "the chunks to be stored")
        victim = service_pids(fmesh)["gateway"]
        os.kill(victim, signal.SIGKILL)
        resume.set()
        sender.join(60)
        assert "error" in outcome or outcome["response"].status_code >= 500, outcome

        # `vidmesh up` restarts it; the upload is where the killed process had stored it
        wait_for(lambda: service_pids(fmesh).get("gateway") not in (None, victim), 30, 0.2, "the gateway to restart")
        wait_for(lambda: gateway_ready(fmesh), 60, 0.2, "the new gateway")
        offset = int(head(c, url).headers["upload-offset"])
        assert 20 * MiB <= offset <= sent_before_kill, offset
        assert offset == sent_before_kill // CHUNK_SIZE * CHUNK_SIZE  # every whole chunk received
        r = patch(c, url, offset, data[offset:])  # resume: the dead gateway's lock is taken at once
        assert r.status_code == 204, r.text
        assert r.headers["vidmesh-video-id"] == video_id
        assert wait_ready(c, video_id)["status"] == "ready"
    assert_same_bytes(fmesh, video_id, path)


def test_tuspy_resumes_a_200_mb_upload_after_its_connection_is_cut(fmesh, tmp_path):
    from tusclient import client as tus_client

    path = Path(make_padded_clip(tmp_path / "tuspy.mp4", 200 * 1000 * 1000))
    with CuttingProxy(fmesh.http_port) as proxy:
        proxy.cut_after(100 * 1000 * 1000)  # about half of the body, then the link drops
        tus = tus_client.TusClient(proxy.url + "/v1/uploads", headers={"Authorization": f"Bearer {Mesh.KEYS['alice']}"})
        uploader = tus.uploader(
            str(path), metadata={"filename": "tuspy.mp4", "filetype": "video/mp4"}, retries=5, retry_delay=1
        )
        uploader.upload()
        assert proxy.cuts == 1
        patches = [r for r in proxy.requests if r.startswith("PATCH ")]
        assert len(patches) >= 2, proxy.requests
        resumed_at = int(re.search(r"(?i)upload-offset:\s*(\d+)", patches[-1]).group(1))
        assert resumed_at >= 50 * 1000 * 1000, patches  # it did not start over
        video_id = uploader.request.response_headers.get("vidmesh-video-id")
    with fmesh.client() as c:
        if not video_id:
            video_id = head(c, uploader.url.replace(proxy.url, "")).headers["vidmesh-video-id"]
        video = wait_ready(c, video_id)
        assert video["status"] == "ready" and video["filename"] == "tuspy.mp4"
    assert_same_bytes(fmesh, video_id, path)


def test_the_cli_resumes_an_interrupted_upload_of_the_same_file(fmesh, tmp_path):
    path = Path(make_padded_clip(tmp_path / "cli.mp4", 24 * MiB))
    data_dir = tmp_path / "cli-data"
    env = {**os.environ, "VIDMESH_DATA_DIR": str(data_dir), "VIDMESH_API_KEY": Mesh.KEYS["alice"]}
    env.pop("VIDMESH_URL", None)
    with CuttingProxy(fmesh.http_port) as proxy:
        proxy.delay_s = 0.01  # a slow link: about 6 MB/s
        cmd = [
            sys.executable,
            "-m",
            "services",
            "upload",
            str(path),
            "--chunk-size",
            "4M",
            "--json",
            "--url",
            proxy.url,
        ]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        saved = data_dir / "uploads"

        def stored_offset():
            files = list(saved.glob("*.json")) if saved.exists() else []
            if not files:
                return 0
            url = json.loads(files[0].read_text())["url"]
            with fmesh.client() as c:
                return int(head(c, url).headers.get("upload-offset", 0))

        wait_for(lambda: stored_offset() >= 8 * MiB, 60, 0.2, "the CLI to store a few chunks")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # the gateway keeps what had arrived of the PATCH the CLI was sending, then lets go
        upload_id = json.loads(next(saved.glob("*.json")).read_text())["url"].rsplit("/", 1)[1]
        wait_for(lambda: lock_free(fmesh, upload_id), 30, 0.2, "the gateway to let go of the upload")
        before = stored_offset()
        assert 8 * MiB <= before < path.stat().st_size
        proxy.delay_s = 0.0
        run = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"resuming at {before} of {path.stat().st_size} bytes" in run.stderr, run.stderr
        creations = [r for r in proxy.requests if r.startswith("POST /v1/uploads ")]
        assert len(creations) == 1, proxy.requests  # the second run created nothing
        video = json.loads(run.stdout.strip().splitlines()[-1])
    assert not list(saved.glob("*.json"))  # done: nothing left to resume
    with fmesh.client() as c:
        assert wait_ready(c, video["id"])["status"] == "ready"
    assert_same_bytes(fmesh, video["id"], path)


def test_no_service_was_refused_anything_by_nats(fmesh):
    violations = [line for line in fmesh.lines if "Violation" in line or "permissions violation" in line]
    assert not violations, "\n".join(violations[:20])
    died = [line for line in fmesh.lines if "exited with" in line and not line.startswith("gateway")]
    assert not died, died  # only the gateway this module killed

"""The probe at upload fetches only the ends of a large upload, and the whole one when that
is not enough: against a real nats-server, object store and probe child process."""

from __future__ import annotations

import os
import random
import struct

import pytest
from prometheus_client import REGISTRY

from services.pipeline import service as pipeline
from services.pipeline.probe import probe
from shared.contracts import ProbeSource
from tests.clips import make_clip
from tests.integration.conftest import connected_bus

MiB = 1024 * 1024


@pytest.fixture
async def bus(nats_server, tmp_path):
    async with connected_bus(nats_server.url, VIDMESH_PROBE_WINDOW_MB="1", VIDMESH_TMP_DIR=str(tmp_path)) as b:
        yield b


@pytest.fixture(scope="module")
def moov_at_end(tmp_path_factory) -> str:
    """An MP4 as cameras write it: frames first, the index (moov) at the end; > 3 MiB."""
    path = make_clip(str(tmp_path_factory.mktemp("clips") / "camera.mp4"), width=1280, height=720, seconds=4.0)
    assert os.path.getsize(path) > 3 * MiB
    return path


def _bytes_read() -> float:
    return REGISTRY.get_sample_value("vidmesh_media_bytes_total", {"direction": "out"}) or 0.0


async def _probe_upload(bus, path: str, name: str):
    await bus.media.put_file(name, path)
    before = _bytes_read()
    probed = await pipeline.probe_source(ProbeSource(tenant="t", video_id="v", object=name), bus)
    return probed, _bytes_read() - before


async def test_a_large_upload_is_probed_from_its_two_ends(bus, moov_at_end):
    probed, fetched = await _probe_upload(bus, moov_at_end, "t/probe/camera")
    assert probed.error is None, probed.error
    assert probed.source == probe(moov_at_end)  # the same facts as probing the whole file
    assert (probed.source.width, probed.source.height) == (1280, 720)
    assert fetched <= 2 * MiB + 512 * 1024 < os.path.getsize(moov_at_end), fetched


async def test_when_the_ends_are_not_enough_the_whole_upload_is_probed(bus, moov_at_end, tmp_path):
    # The index in the middle: a 2 MiB `free` box appended after moov pushes it out of the tail.
    path = tmp_path / "index-in-the-middle.mp4"
    padding = 2 * MiB
    path.write_bytes(open(moov_at_end, "rb").read() + struct.pack(">I4s", padding, b"free") + bytes(padding - 8))
    probed, fetched = await _probe_upload(bus, str(path), "t/probe/middle")
    assert probed.error is None, probed.error
    assert probed.source == probe(str(path))
    assert fetched >= os.path.getsize(path)  # the fallback fetched it all


async def test_a_large_upload_that_is_not_media_is_refused_after_the_whole_probe(bus, tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(random.Random(0).randbytes(3 * MiB))  # seeded: random bytes may parse as a raw stream
    probed, fetched = await _probe_upload(bus, str(path), "t/probe/noise")
    assert probed.error is not None and probed.error.code == "not_media", probed
    assert fetched >= 3 * MiB

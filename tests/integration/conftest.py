"""A Bus connected to the session's real nats-server, with the mesh's streams and buckets."""

from __future__ import annotations

import contextlib

import pytest

from services import mesh, provision
from shared import telemetry
from shared.bus import Bus
from tests.settings import MeshSettings


@contextlib.asynccontextmanager
async def connected_bus(url: str, **env: str):
    """A Bus on `url` with the settings `env` changes (VIDMESH_* names), the topology ensured."""
    settings = MeshSettings.load({"NATS_URL": url, **env})
    telemetry.setup("test")
    b = await Bus.connect(settings, "test")
    await provision.ensure(b.js, settings, mesh.consumers())
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def bus(nats_server):
    async with connected_bus(nats_server.url) as b:
        yield b

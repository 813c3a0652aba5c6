"""The quota admission ledger against a real nats-server and the catalog's real usage
endpoint: an admission holds its slot while it is renewed, and a gateway that dies (no
renewal) frees it after HOLD_S."""

from __future__ import annotations

import asyncio

import pytest

from services import mesh, provision
from services.catalog import declaration as catalog_declaration
from services.catalog import service as catalog
from services.gateway import quotas
from services.gateway.settings import GatewaySettings
from shared import telemetry, topology
from shared.bus import Bus
from shared.contracts import GetUsage
from shared.service import Service
from tests.conftest import NatsServer

HOLD_S = 1.0


@pytest.fixture
async def bus(tmp_path, monkeypatch):
    monkeypatch.setattr(quotas, "HOLD_S", HOLD_S)
    # A server of its own: the usage endpoint counts what the `videos` bucket holds, and
    # only these tests' admissions and records are there.
    server = NatsServer(tmp_path / "nats").start()
    settings = GatewaySettings.load({"NATS_URL": server.url, "VIDMESH_QUOTA_MAX_PROCESSING": "1"})
    telemetry.setup("test")
    b = await Bus.connect(settings, "test")
    await provision.ensure(b.js, settings, mesh.consumers())
    # the catalog's own usage handler, served on the bus as the catalog serves it
    usage = Service(catalog_declaration.DECLARATION)
    usage.endpoint(topology.RPC_CATALOG_USAGE, GetUsage)(catalog.usage)
    usage.settings = settings
    await usage._start()
    yield b
    await usage.stop()
    await b.close()
    server.stop()


async def test_an_admission_renewed_while_its_upload_streams_keeps_its_slot(bus):
    async with quotas.admitted(bus, "renew", "v1"):
        await asyncio.sleep(3 * HOLD_S)  # longer than HOLD_S: only the renewal keeps it
        with pytest.raises(quotas.QuotaExceeded) as exc:
            async with quotas.admitted(bus, "renew", "v2"):
                pass
        assert exc.value.code == "quota_processing"
    async with quotas.admitted(bus, "renew", "v3"):  # left once the upload was announced
        pass


async def test_the_slot_of_a_gateway_that_died_frees_itself(bus):
    settings = bus.settings
    await quotas._admit(bus, "dead", "v1", None, settings.quota_max_processing, 0)  # admitted, never renewed
    with pytest.raises(quotas.QuotaExceeded):
        await quotas._admit(bus, "dead", "v2", None, settings.quota_max_processing, 0)
    await asyncio.sleep(HOLD_S + 0.5)
    async with quotas.admitted(bus, "dead", "v3"):
        pass

"""How the gateway answers when a service behind it does not (no NATS needed)."""

from __future__ import annotations

import asyncio
import json

from services.gateway.service import service
from services.gateway.settings import GatewaySettings
from shared.bus import RpcError


def _answer(exc: RpcError):
    app = service.app()  # no lifespan: nothing connects to NATS
    before, service.settings = service.settings, GatewaySettings.load({"VIDMESH_RETRY_AFTER_S": "7"})
    try:
        return asyncio.run(app.exception_handlers[RpcError](None, exc))
    finally:
        service.settings = before


def test_a_service_that_does_not_answer_is_a_503_with_retry_after():
    r = _answer(RpcError("unavailable", "no service answers pipeline.rpc.probe"))
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert json.loads(r.body) == {"code": "unavailable", "message": "no service answers pipeline.rpc.probe"}


def test_a_missing_video_is_a_404_without_retry_after():
    r = _answer(RpcError("not_found", "no such video"))
    assert r.status_code == 404 and "retry-after" not in r.headers

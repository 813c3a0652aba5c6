"""The /v1/webhooks routes: a tenant's webhooks and their deliveries, kept by the notifier.

The gateway only authenticates and translates HTTP to the notifier's request-reply
endpoints (`notifier.rpc.*`); URL and address checks are the notifier's, since it applies
VIDMESH_WEBHOOK_ALLOW_PRIVATE. Wired into the gateway with
`api.include_router(webhooks_router)` in service.py.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from shared import topology
from shared.bus import Bus, RpcError
from shared.contracts import (
    WEBHOOK_EVENT_TYPES,
    CreateWebhook,
    DeleteWebhook,
    DeliveryPage,
    GetWebhook,
    ListDeliveries,
    ListWebhooks,
    Webhook,
    WebhookPage,
)

from . import schemas
from .app import ApiError, ConnectedBus, Tenant, json_response

router = APIRouter(tags=["webhooks"])

# The notifier's error codes as HTTP statuses.
STATUS = {
    "not_found": 404,
    "invalid_request": 400,
    "bad_request": 400,
    "invalid_url": 422,
    "private_address": 422,
    "too_many_webhooks": 409,
    "unavailable": 503,
    "timeout": 504,
}


class NewWebhook(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/webhooks (an HTTP body, not a bus message: typos are refused,
    and so are over-long values, before anything reaches the notifier)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: Annotated[list[str], msgspec.Meta(max_length=len(WEBHOOK_EVENT_TYPES))] = []
    description: Annotated[str, msgspec.Meta(max_length=200)] | None = None


_new_webhook = msgspec.json.Decoder(NewWebhook)

CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["url"],
                    "additionalProperties": False,
                    "properties": {
                        "url": {
                            "type": "string",
                            "format": "uri",
                            "maxLength": 2048,
                            "example": "https://example.com/hooks/vidmesh",
                        },
                        "events": {
                            "type": "array",
                            "maxItems": len(WEBHOOK_EVENT_TYPES),
                            "items": {"type": "string", "enum": list(WEBHOOK_EVENT_TYPES)},
                            "description": "default: all of them",
                        },
                        "description": {"type": "string", "maxLength": 200},
                    },
                }
            }
        },
    }
}


async def _ask(bus: Bus, subject: str, msg, reply_type):
    try:
        return await bus.request(subject, msg, reply_type)
    except RpcError as exc:
        raise ApiError(STATUS.get(exc.code, 502), exc.code, exc.message) from None


def _check_id(webhook_id: str) -> None:
    if not (
        webhook_id.startswith("wh_") and len(webhook_id) <= 40 and webhook_id.isascii() and webhook_id[3:].isalnum()
    ):
        raise ApiError(404, "not_found", f"no webhook {webhook_id}")


@router.post(
    "/v1/webhooks",
    status_code=201,
    openapi_extra=CREATE_BODY,
    responses=schemas.WEBHOOK_CREATE,
    summary="Register a webhook (the secret is shown once)",
)
async def create_webhook(request: Request, tenant: Tenant, bus: ConnectedBus):
    try:
        body = _new_webhook.decode(await request.body())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_request", f"expected JSON {{url, events?, description?}}: {exc}") from None
    req = CreateWebhook(tenant=tenant, url=body.url, events=body.events, description=body.description)
    hook = await _ask(bus, topology.RPC_WEBHOOK_CREATE, req, Webhook)
    return json_response(hook, 201, {"Location": f"/v1/webhooks/{hook.id}", "Cache-Control": "no-store"})


@router.get("/v1/webhooks", responses=schemas.WEBHOOK_LIST, summary="The tenant's webhooks (without secrets)")
async def list_webhooks(tenant: Tenant, bus: ConnectedBus):
    return json_response(await _ask(bus, topology.RPC_WEBHOOK_LIST, ListWebhooks(tenant=tenant), WebhookPage))


@router.get("/v1/webhooks/{webhook_id}", responses=schemas.WEBHOOK_GET, summary="One webhook (without its secret)")
async def get_webhook(webhook_id: str, tenant: Tenant, bus: ConnectedBus):
    _check_id(webhook_id)
    return json_response(
        await _ask(bus, topology.RPC_WEBHOOK_GET, GetWebhook(tenant=tenant, webhook_id=webhook_id), Webhook)
    )


@router.delete(
    "/v1/webhooks/{webhook_id}",
    status_code=204,
    responses=schemas.WEBHOOK_DELETE,
    summary="Delete a webhook; queued deliveries are cancelled",
)
async def delete_webhook(webhook_id: str, tenant: Tenant, bus: ConnectedBus):
    _check_id(webhook_id)
    await _ask(bus, topology.RPC_WEBHOOK_DELETE, DeleteWebhook(tenant=tenant, webhook_id=webhook_id), Webhook)
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    responses=schemas.WEBHOOK_DELIVERIES,
    summary="Recent deliveries with every attempt, newest first",
)
async def list_deliveries(webhook_id: str, tenant: Tenant, bus: ConnectedBus, limit: int = Query(50, ge=1, le=200)):
    _check_id(webhook_id)
    req = ListDeliveries(tenant=tenant, webhook_id=webhook_id, limit=limit)
    return json_response(await _ask(bus, topology.RPC_WEBHOOK_DELIVERIES, req, DeliveryPage))

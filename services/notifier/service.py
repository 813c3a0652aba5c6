"""notifier: signed webhooks for video.ready, video.failed and video.deleted, with retries.

Two stages, so one event reaching several webhooks retries each one on its own:
1. `on_event` (durable consumer on EVENTS, filtered to the three terminal facts) finds the
   tenant's webhooks that want the event, snapshots the video's JSON from the catalog and
   publishes one `DeliverWebhook` task per webhook on the TASKS_WEBHOOK work queue.
2. `deliver` (work-queue consumer, shared by every replica) POSTs the body, signed with
   the webhook's secret (`Vidmesh-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">`).
   A timeout or a non-2xx answer naks the task with a growing delay (JetStream redelivers
   it: no sleeping loop); after VIDMESH_WEBHOOK_MAX_ATTEMPTS it is dead-lettered. Every
   attempt is recorded in the `webhook_deliveries` bucket (GET /v1/webhooks/{id}/deliveries).

The webhooks themselves (url, event types, secret) are kept in the `webhooks` bucket and
managed over request-reply by the gateway's /v1/webhooks routes. The secret must be kept
to sign with, so it is sealed (AES-GCM, keys from VIDMESH_WEBHOOK_KEYS: sealing.py), never
stored in plain text; the notifier does not start without a key.
"""

from __future__ import annotations

import secrets
import time

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared import telemetry, topology
from shared.bus import Bus, KvContention, RpcError, kv_update
from shared.consumer import Delivery, Poison, Retry, backoff
from shared.contracts import (
    WEBHOOK_EVENT_TYPES,
    CreateWebhook,
    DeleteWebhook,
    DeliverWebhook,
    DeliveryAttempt,
    DeliveryPage,
    Event,
    GetVideo,
    GetWebhook,
    ListDeliveries,
    ListWebhooks,
    Video,
    VideoDeleted,
    VideoFailed,
    VideoReady,
    Webhook,
    WebhookDelivery,
    WebhookPage,
    encode,
)
from shared.kvscan import entries
from shared.service import Service
from shared.settings import ConfigError

from . import declaration, outbound, sealing
from .settings import NotifierSettings
from .signature import HEADER as SIGNATURE_HEADER
from .signature import sign

service = Service(declaration.DECLARATION, settings=NotifierSettings)

EVENT_TYPES = {VideoReady: "video.ready", VideoFailed: "video.failed", VideoDeleted: "video.deleted"}
STATUS_OF = {"video.ready": "ready", "video.failed": "failed", "video.deleted": "deleted"}
MAX_WEBHOOKS_PER_TENANT = 20
BACKOFF_CAP_S = 3600.0
CAS_ATTEMPTS = 10


class WebhookRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the notifier keeps per webhook (its own storage format)."""

    id: str
    tenant: str
    url: str
    events: list[str]
    created_at: float
    description: str | None = None
    sealed_secret: str | None = None  # sealing.Keyring.seal(secret, context=self.context)
    secret: str | None = None  # only in records written before secrets were sealed

    @property
    def context(self) -> str:
        return f"{self.tenant}/{self.id}"

    def view(self, secret: str | None = None) -> Webhook:
        return Webhook(
            id=self.id,
            url=self.url,
            events=list(self.events),
            created_at=self.created_at,
            description=self.description,
            secret=secret,
        )

    def signing_secret(self, keys: tuple[str, ...]) -> str:
        if self.sealed_secret is None:
            return self.secret or ""
        return sealing.keyring(keys).open(self.sealed_secret, self.context)


class WebhookEventData(msgspec.Struct, frozen=True, kw_only=True):
    video: Video


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body a receiver gets; `id` is the same on every attempt (dedupe on it)."""

    id: str
    type: str
    created_at: float
    data: WebhookEventData


record_decoder = msgspec.json.Decoder(WebhookRecord)
delivery_decoder = msgspec.json.Decoder(WebhookDelivery)


@service.on_startup
async def _check_keys(bus: Bus) -> None:
    """Refuse to start without a valid key: a webhook secret is never stored in plain text."""
    try:
        sealing.keyring(bus.settings.webhook_keys)
    except ValueError as exc:
        raise ConfigError(f"VIDMESH_WEBHOOK_KEYS: {exc}; `vidmesh webhook-key` prints a new key") from None


# --- stage 1: an event becomes one delivery task per interested webhook -----------------------


@service.consumer(declaration.EVENTS, Event)
async def on_event(event, delivery: Delivery) -> None:
    kind = EVENT_TYPES.get(type(event))
    if kind is not None:
        await fan_out(delivery.bus, event, kind, delivery)


async def fan_out(bus: Bus, event, kind: str, delivery: Delivery) -> None:
    hooks = [h for h in await _webhooks(bus, event.tenant) if kind in h.events]
    if not hooks:
        return
    video = await _video_for(bus, event, delivery)
    event_id = f"evt_{event.video_id}_{STATUS_OF[kind]}"
    happened_at = delivery.msg.metadata.timestamp.timestamp()  # the same on every redelivery
    body = encode(WebhookEvent(id=event_id, type=kind, created_at=happened_at, data=WebhookEventData(video=video)))
    deliveries = await bus.kv(topology.KV_DELIVERIES)
    now = time.time()
    for hook in hooks:
        delivery_id = f"dlv_{event.video_id}_{STATUS_OF[kind]}"
        key = topology.delivery_key(event.tenant, hook.id, delivery_id)
        record = WebhookDelivery(
            id=delivery_id,
            webhook_id=hook.id,
            event_id=event_id,
            event_type=kind,
            video_id=event.video_id,
            status="pending",
            created_at=now,
            updated_at=now,
        )
        try:
            await deliveries.create(key, encode(record))
        except KeyWrongLastSequenceError:
            existing = await _get(deliveries, key)
            if existing is not None and delivery_decoder.decode(existing.value).status != "pending":
                continue  # a redelivered event: this webhook's task already ran
        task = DeliverWebhook(
            tenant=event.tenant,
            video_id=event.video_id,
            webhook_id=hook.id,
            delivery_id=delivery_id,
            event_id=event_id,
            event_type=kind,
            body=body.decode(),
        )
        await bus.publish(task, msg_id=f"{hook.id}:{delivery_id}")


async def _video_for(bus: Bus, event, delivery: Delivery) -> Video:
    """The video's JSON as the catalog shows it once its record holds this event (the
    catalog projects the same event concurrently). An error, `not_yet` included, brings
    the event back later; the last attempt takes the catalog's view as it is."""
    after_seq = 0 if delivery.last_attempt else delivery.seq
    ask = GetVideo(tenant=event.tenant, video_id=event.video_id, after_seq=after_seq)
    try:
        return await bus.request(topology.RPC_CATALOG_GET, ask, Video)
    except RpcError as exc:
        raise Retry(f"catalog: {exc}", delay=min(5.0, 0.5 * delivery.attempt)) from None


# --- stage 2: one POST per attempt, retried through JetStream ----------------------------------


async def dead(task: DeliverWebhook, delivery: Delivery, exc: Exception) -> None:
    """The task is being dead-lettered. `deliver` records its own refusals and last
    attempts; this covers a handler that kept failing unexpectedly."""
    if isinstance(exc, Poison):
        return
    attempt = DeliveryAttempt(attempt=delivery.attempt, at=time.time(), error=f"notifier error: {exc}"[:300])
    await _record_attempt(delivery.bus, task, attempt, "dead")


@service.consumer(declaration.DELIVERIES, DeliverWebhook, on_exhausted=dead)
async def deliver(task: DeliverWebhook, delivery: Delivery) -> None:
    bus = delivery.bus
    settings = bus.settings
    hook = await _webhook(bus, task.tenant, task.webhook_id)
    if hook is None:  # deleted since the event: nothing to deliver to
        await _update_delivery(
            bus, task, lambda r: msgspec.structs.replace(r, status="cancelled", updated_at=time.time())
        )
        return
    attempt = delivery.attempt
    at = time.time()
    try:
        target = await outbound.resolve(hook.url, allow_private=settings.webhook_allow_private)
    except outbound.Refused as exc:
        await _record_attempt(bus, task, DeliveryAttempt(attempt=attempt, at=at, error=f"refused: {exc}"), "dead")
        raise Poison("private_address", str(exc)) from None
    except (outbound.Unresolvable, outbound.InvalidUrl) as exc:
        outcome = outbound.Outcome(False, None, str(exc), 0.0)
    else:
        try:
            secret = hook.signing_secret(settings.webhook_keys)
        except sealing.SealError as exc:  # a key missing from the config: replayable from the DLQ once it is back
            await _record_attempt(bus, task, DeliveryAttempt(attempt=attempt, at=at, error=f"secret: {exc}"), "dead")
            raise Poison("secret_unavailable", str(exc)) from None
        body = task.body.encode()
        headers = {
            SIGNATURE_HEADER: sign(secret, body),
            "Vidmesh-Event-Id": task.event_id,
            "Vidmesh-Event-Type": task.event_type,
            "Vidmesh-Delivery-Id": task.delivery_id,
            "Vidmesh-Delivery-Attempt": str(attempt),
        }
        outcome = await outbound.post(target, body, _with_trace(headers), timeout_s=settings.webhook_timeout_s)
    record = DeliveryAttempt(
        attempt=attempt, at=at, status_code=outcome.status_code, error=outcome.error, duration_ms=outcome.duration_ms
    )
    if outcome.ok:
        await _record_attempt(bus, task, record, "succeeded")
        return
    if attempt >= settings.webhook_max_attempts:
        await _record_attempt(bus, task, record, "dead")
        raise Poison("retries_exhausted", f"{attempt} attempts, the last: {outcome.error}")
    delay = backoff(attempt, base=settings.webhook_backoff_s, cap=BACKOFF_CAP_S)
    await _record_attempt(bus, task, record, "retrying", next_attempt_at=time.time() + delay)
    raise Retry(outcome.error or "failed", delay=delay)


def _with_trace(headers: dict[str, str]) -> dict[str, str]:
    return telemetry.inject(headers)  # the receiver can continue the upload's trace


async def _record_attempt(
    bus: Bus, task: DeliverWebhook, attempt: DeliveryAttempt, status: str | None, next_attempt_at: float | None = None
) -> None:
    def change(record: WebhookDelivery) -> WebhookDelivery:
        attempts = [a for a in record.attempts if a.attempt != attempt.attempt] + [attempt]
        return msgspec.structs.replace(
            record,
            attempts=attempts[-50:],
            status=status or record.status,
            next_attempt_at=next_attempt_at,
            updated_at=time.time(),
        )

    await _update_delivery(bus, task, change)


async def _update_delivery(bus: Bus, task: DeliverWebhook, change) -> None:
    """Compare-and-set on the delivery record; recreates it if it expired meanwhile."""
    kv = await bus.kv(topology.KV_DELIVERIES)
    key = topology.delivery_key(task.tenant, task.webhook_id, task.delivery_id)

    def apply(value: bytes | None) -> bytes:
        if value is None:
            now = time.time()
            current = WebhookDelivery(
                id=task.delivery_id,
                webhook_id=task.webhook_id,
                event_id=task.event_id,
                event_type=task.event_type,
                video_id=task.video_id,
                status="pending",
                created_at=now,
                updated_at=now,
            )
        else:
            current = delivery_decoder.decode(value)
        return encode(change(current))

    try:
        await kv_update(kv, key, apply, attempts=CAS_ATTEMPTS)
    except KvContention:
        raise Retry(f"contention on {key}") from None


# --- request-reply: the gateway's /v1/webhooks -------------------------------------------------


@service.endpoint(topology.RPC_WEBHOOK_CREATE, concurrency=2)
async def create_webhook(req: CreateWebhook, bus: Bus) -> Webhook:
    events = list(dict.fromkeys(req.events)) or list(WEBHOOK_EVENT_TYPES)
    unknown = [e for e in events if e not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise RpcError("invalid_request", f"unknown event types {unknown}; choose from {list(WEBHOOK_EVENT_TYPES)}")
    if req.description is not None and len(req.description) > 200:
        raise RpcError("invalid_request", "the description is limited to 200 characters")
    try:
        await outbound.resolve(req.url, allow_private=bus.settings.webhook_allow_private)
    except outbound.InvalidUrl as exc:
        raise RpcError("invalid_url", str(exc)) from None
    except outbound.Unresolvable as exc:
        raise RpcError("invalid_url", str(exc)) from None
    except outbound.Refused as exc:
        raise RpcError("private_address", str(exc)) from None
    if len(await _webhooks(bus, req.tenant)) >= MAX_WEBHOOKS_PER_TENANT:
        raise RpcError("too_many_webhooks", f"a tenant can have at most {MAX_WEBHOOKS_PER_TENANT} webhooks")
    record = WebhookRecord(
        id=f"wh_{secrets.token_hex(8)}",
        tenant=req.tenant,
        url=req.url,
        events=events,
        created_at=time.time(),
        description=req.description,
    )
    secret = f"whsec_{secrets.token_urlsafe(32)}"
    sealed = sealing.keyring(bus.settings.webhook_keys).seal(secret, record.context)
    record = msgspec.structs.replace(record, sealed_secret=sealed)
    kv = await bus.kv(topology.KV_WEBHOOKS)
    await kv.create(topology.webhook_key(req.tenant, record.id), encode(record))
    return record.view(secret)  # the only time the secret is shown


@service.endpoint(topology.RPC_WEBHOOK_LIST)
async def list_webhooks(req: ListWebhooks, bus: Bus) -> WebhookPage:
    return WebhookPage(items=[h.view() for h in await _webhooks(bus, req.tenant)])


@service.endpoint(topology.RPC_WEBHOOK_GET)
async def get_webhook(req: GetWebhook, bus: Bus) -> Webhook:
    return (await _existing(bus, req.tenant, req.webhook_id)).view()


@service.endpoint(topology.RPC_WEBHOOK_DELETE)
async def delete_webhook(req: DeleteWebhook, bus: Bus) -> Webhook:
    hook = await _existing(bus, req.tenant, req.webhook_id)
    kv = await bus.kv(topology.KV_WEBHOOKS)
    await kv.delete(topology.webhook_key(req.tenant, req.webhook_id))
    return hook.view()  # tasks still queued for it end `cancelled`


@service.endpoint(topology.RPC_WEBHOOK_DELIVERIES)
async def list_deliveries(req: ListDeliveries, bus: Bus) -> DeliveryPage:
    await _existing(bus, req.tenant, req.webhook_id)
    pattern = f"{req.tenant}.{req.webhook_id}.*"
    items = [delivery_decoder.decode(e.value) async for e in entries(bus.js, topology.KV_DELIVERIES, pattern)]
    items.sort(key=lambda d: d.created_at, reverse=True)
    return DeliveryPage(items=items[: max(1, min(req.limit, 200))])


# --- storage ---------------------------------------------------------------------------------


def _valid_id(webhook_id: str) -> bool:
    return webhook_id.startswith("wh_") and len(webhook_id) <= 40 and webhook_id.isascii() and webhook_id[3:].isalnum()


async def _webhook(bus: Bus, tenant: str, webhook_id: str) -> WebhookRecord | None:
    if not _valid_id(webhook_id):
        return None
    kv = await bus.kv(topology.KV_WEBHOOKS)
    entry = await _get(kv, topology.webhook_key(tenant, webhook_id))
    return record_decoder.decode(entry.value) if entry else None


async def _existing(bus: Bus, tenant: str, webhook_id: str) -> WebhookRecord:
    hook = await _webhook(bus, tenant, webhook_id)
    if hook is None:
        raise RpcError("not_found", f"no webhook {webhook_id}")
    return hook


async def _webhooks(bus: Bus, tenant: str) -> list[WebhookRecord]:
    hooks = [record_decoder.decode(e.value) async for e in entries(bus.js, topology.KV_WEBHOOKS, f"{tenant}.*")]
    return sorted(hooks, key=lambda h: h.created_at)


async def _get(kv, key: str):
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None

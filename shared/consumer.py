"""The pull-consumer loop and its delivery rules.

- ack only after the handler returned (its side effects are durable);
- `Retry` or any unexpected exception: nak with a growing delay, until max_deliver;
- `Poison` or an undecodable payload: term at once, and record the message and the reason
  in the dead-letter stream (its headers, trace context included, travel along);
- while a handler runs, `in_progress()` heartbeats keep the message from being redelivered,
  so ack_wait stays short and a crashed worker's task comes back quickly;
- on shutdown: stop fetching, let the messages in hand finish within a bound, nak the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from . import contracts, telemetry, topology
from .bus import Bus
from .declaration import ConsumerSpec

log = logging.getLogger("vidmesh.consumer")

PROCESSED = Counter("vidmesh_messages_total", "Messages handled by outcome", ["consumer", "outcome"])
DEAD_LETTERED = Counter(
    "vidmesh_dead_letters_total", "Messages moved to the dead-letter stream", ["stream", "consumer"]
)
LAG = Gauge("vidmesh_consumer_lag", "Messages waiting for a durable consumer (pending + unacked)", ["consumer"])
DURATION = Histogram(
    "vidmesh_message_seconds",
    "Handler duration",
    ["consumer"],
    buckets=(0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)


class Retry(Exception):
    """A retryable failure: the message comes back after a delay."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.delay = delay


class Poison(Exception):
    """The message can never succeed (bad input): terminated and recorded, never retried."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Delivery:
    """What a handler knows about the message in hand, besides its payload."""

    msg: Msg
    bus: Bus
    spec: ConsumerSpec
    max_deliver: int
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def attempt(self) -> int:
        return self.msg.metadata.num_delivered

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_deliver

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def seq(self) -> int:
        """The message's sequence in its stream (the same on every redelivery)."""
        return self.msg.metadata.sequence.stream


# The payload is what the consumer's kind decodes to (a message type or a union of them),
# which a type checker cannot follow from the kind to the handler: Any.
Handler = Callable[[Any, Delivery], Awaitable[None]]
# Called with the payload, the delivery and why, before a message is dead-lettered.
OnExhausted = Callable[[Any, Delivery, Exception], Awaitable[None]]


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    return min(cap, base * 2.0 ** max(0, attempt - 1))


async def dead_letter(
    bus: Bus,
    *,
    data: bytes,
    headers: dict[str, str] | None,
    subject: str,
    stream: str,
    consumer: str,
    seq: int,
    deliveries: int,
    reason: str,
) -> None:
    """Keep a copy of a message that will not be processed, with why, for `vidmesh dlq`.

    The original headers (trace context included) travel along; the msg-id makes a
    repeated dead-lettering of the same stream message a no-op.
    """
    kept = {k: v for k, v in (headers or {}).items() if k != "Nats-Msg-Id" and not k.startswith("Vidmesh-Dead-")}
    kept.update(
        {
            "Vidmesh-Dead-Reason": reason[:500],
            "Vidmesh-Dead-Subject": subject,
            "Vidmesh-Dead-Stream": stream,
            "Vidmesh-Dead-Consumer": consumer,
            "Vidmesh-Dead-Stream-Seq": str(seq),
            "Vidmesh-Dead-Deliveries": str(deliveries),
            # per consumer: one stream message can be poison to several of them (EVENTS)
            "Nats-Msg-Id": f"dead:{stream}:{consumer}:{seq}",
        }
    )
    await bus.js.publish(topology.dead_letter_subject(stream, consumer), data, headers=kept)
    DEAD_LETTERED.labels(stream, consumer).inc()


async def dead_letter_msg(bus: Bus, msg: Msg, spec: ConsumerSpec, reason: str) -> None:
    meta = msg.metadata
    await dead_letter(
        bus,
        data=msg.data,
        headers=msg.headers,
        subject=msg.subject,
        stream=spec.stream,
        consumer=spec.durable,
        seq=meta.sequence.stream,
        deliveries=meta.num_delivered,
        reason=reason,
    )


class ConsumerLoop:
    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        kind: object,
        handler: Handler,
        *,
        concurrency: int = 1,
        max_deliver: int | None = None,
        ack_wait_s: float | None = None,
        on_exhausted: OnExhausted | None = None,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.decoder = contracts.decoder(kind)
        self.handler = handler
        self.concurrency = concurrency
        self.max_deliver = max_deliver or spec.max_deliver
        self.heartbeat_s = max(1.0, (ack_wait_s or spec.ack_wait_s) / 3)
        self.on_exhausted = on_exhausted
        self.stopping = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        sub = await self.bus.js.pull_subscribe_bind(self.spec.durable, self.spec.stream)
        lag = asyncio.create_task(self._watch_lag())
        try:
            await self._loop(sub)
        finally:
            lag.cancel()

    async def _watch_lag(self, every: float = 5.0) -> None:
        while True:
            try:
                info = await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
                LAG.labels(self.spec.durable).set(info.num_pending + info.num_ack_pending)
            except Exception:
                pass
            await asyncio.sleep(every)

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self.stopping.is_set():
            free = self.concurrency - len(self.inflight)
            if free <= 0:
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await sub.fetch(free, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # disconnected, server restarting: keep trying
                log.warning("fetch from %s failed: %s", self.spec.durable, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)

    async def stop(self, timeout: float) -> None:
        """Stop fetching; give in-flight messages `timeout` seconds, then nak what is left."""
        self.stopping.set()
        if self.inflight:
            done, pending = await asyncio.wait(set(self.inflight), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _process(self, msg: Msg) -> None:
        delivery = Delivery(msg, self.bus, self.spec, self.max_deliver, self.stopping)
        parent = telemetry.extract(msg.headers)
        prefix = msg.subject.rsplit(".", 2)[0]
        with telemetry.tracer.start_as_current_span(
            f"process {prefix}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=telemetry.messaging_attributes(
                "process",
                msg.subject,
                **{
                    "messaging.consumer.group.name": self.spec.durable,
                    "messaging.message.id": (msg.headers or {}).get("Nats-Msg-Id"),
                    "messaging.message.delivery_count": msg.metadata.num_delivered,
                },
            ),
        ) as span:
            outcome = await self._handle(msg, delivery, span)
            PROCESSED.labels(self.spec.durable, outcome).inc()

    async def _handle(self, msg: Msg, delivery: Delivery, span: trace.Span) -> str:
        try:
            payload = self.decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await self._poison(msg, span, f"undecodable: {exc}")
        tenant, video_id = getattr(payload, "tenant", None), getattr(payload, "video_id", None)
        if video_id:
            span.set_attribute("vidmesh.video.id", video_id)
            span.set_attribute("vidmesh.tenant", tenant)
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        started = time.perf_counter()
        try:
            await self.handler(payload, delivery)
        except asyncio.CancelledError:
            await _quietly(msg.nak())  # shutdown: hand it to another replica now
            raise
        except Poison as exc:
            if self.on_exhausted:
                await self.on_exhausted(payload, delivery, exc)
            return await self._poison(msg, span, str(exc))
        except Exception as exc:
            retry = isinstance(exc, Retry)
            if not retry:
                log.exception("handler %s failed on %s", self.spec.durable, msg.subject)
            if delivery.last_attempt:
                span.add_event("dead-lettered", {"reason": str(exc)})
                if self.on_exhausted:
                    await self.on_exhausted(payload, delivery, exc)
                await dead_letter_msg(self.bus, msg, self.spec, f"retries exhausted: {exc}")
                await msg.term()
                return "exhausted"
            delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else backoff(delivery.attempt)
            span.add_event("retry", {"reason": str(exc), "delay_s": delay})
            await msg.nak(delay=delay)
            return "retried"
        finally:
            heartbeat.cancel()
            DURATION.labels(self.spec.durable).observe(time.perf_counter() - started)
        await msg.ack()
        return "ok"

    async def _poison(self, msg: Msg, span: trace.Span, reason: str) -> str:
        log.warning("terminating %s on %s: %s", self.spec.durable, msg.subject, reason)
        span.add_event("dead-lettered", {"reason": reason})
        await dead_letter_msg(self.bus, msg, self.spec, reason)
        await msg.term()
        return "poison"

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await _quietly(msg.in_progress())


async def _quietly(coro: Awaitable[None]) -> None:
    try:
        await coro
    except Exception:
        pass

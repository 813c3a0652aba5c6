"""Connect, publish and request: the one way services touch NATS.

Every publish carries `Nats-Msg-Id` (JetStream drops a retried publish inside the stream's
duplicate window) and the W3C trace context; every request maps a `nats.micro` error reply
to `RpcError`, so callers see the service's own code and message.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar, cast

import msgspec
import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace

from . import contracts, permissions, telemetry, topology
from .contracts import VideoDeleted
from .declaration import Declaration, UndeclaredSubject
from .settings import Settings

if TYPE_CHECKING:
    from .objects import MediaStore

log = logging.getLogger("vidmesh.bus")

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"

Reply = TypeVar("Reply")


class RpcError(Exception):
    """A request-reply call that the service answered with an error (or nobody answered)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


RECONNECT_LOG_EVERY_S = 10.0


class Bus:
    def __init__(self, nc: Client, settings: Settings, service: str, declaration: Declaration | None = None):
        self.nc = nc
        self.declaration = declaration  # None (admin tools, tests): no check
        self.js: JetStreamContext = nc.jetstream(timeout=10.0)
        self.settings = settings
        self.service = service
        self._kv: dict[str, KeyValue] = {}
        self._objects: MediaStore | None = None

    @classmethod
    async def connect(
        cls, settings: Settings, service: str, url: str | None = None, declaration: Declaration | None = None
    ) -> Bus:
        quiet_until = 0.0  # while the server is away, each failed reconnect is not news

        async def disconnected() -> None:
            if not nc.is_closed:  # an intended close is not news
                log.warning("nats disconnected")

        async def reconnected() -> None:
            nonlocal quiet_until
            quiet_until = 0.0
            log.warning("nats reconnected")

        async def error(exc: Exception) -> None:
            nonlocal quiet_until
            now = time.monotonic()
            if isinstance(exc, OSError) and now < quiet_until:
                return
            if isinstance(exc, OSError):
                quiet_until = now + RECONNECT_LOG_EVERY_S
                log.warning("nats error: %s (retrying every 0.5 s)", exc)
            else:
                log.warning("nats error: %s", exc)

        servers = (url or settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}").split(",")
        # Each service is its own NATS user (services/nats_auth.py) with its own inbox
        # prefix, the only inboxes its permissions let it subscribe to.
        user, password = permissions.credentials(settings, service)
        nc = await nats.connect(
            [s.strip() for s in servers if s.strip()],  # a cluster: every seed URL
            name=f"vidmesh-{service}",
            user=user,
            password=password,
            inbox_prefix=permissions.inbox_prefix(service),
            max_reconnect_attempts=-1,  # never give up: the server may restart under us
            reconnect_time_wait=0.5,
            connect_timeout=3,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        return cls(nc, settings, service, declaration)

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    @property
    def media(self) -> MediaStore:
        from .objects import MediaStore  # local: objects imports bus types for hints only

        if self._objects is None:
            self._objects = MediaStore(self.js, topology.OBJ_MEDIA)
        return self._objects

    async def publish(self, msg: msgspec.Struct, *, msg_id: str, subject: str | None = None) -> int:
        """Publish an event or task to JetStream; returns the stream sequence. Raises
        UndeclaredSubject when the service's declaration does not name the subject."""
        # Without a subject, `msg` is one of topology.SUBJECTS' types, which all carry the
        # tenant and video id (subject_for raises KeyError for any other type).
        subject = subject or topology.subject_for(cast(topology.Addressed, msg))
        if self.declaration is not None and not self.declaration.may_publish(subject):
            raise UndeclaredSubject(f"{self.service} does not declare that it publishes {subject}")
        # the span is named after the subject's prefix: tenant and video id are attributes
        with self._send_span(subject.rsplit(".", 2)[0], trace.SpanKind.PRODUCER, subject, msg, msg_id=msg_id):
            headers = telemetry.inject({"Nats-Msg-Id": msg_id})
            ack = await self.js.publish(subject, contracts.encode(msg), headers=headers)
            return ack.seq

    async def request(
        self, subject: str, msg: msgspec.Struct, reply_type: type[Reply], *, timeout: float = 10.0
    ) -> Reply:
        """Request-reply to a `nats.micro` endpoint; decodes the reply or raises RpcError
        (UndeclaredSubject when the service's declaration does not name the subject)."""
        if self.declaration is not None and not self.declaration.may_call(subject):
            raise UndeclaredSubject(f"{self.service} does not declare that it calls {subject}")
        with self._send_span(subject, trace.SpanKind.CLIENT, subject, msg):
            try:
                reply = await self.nc.request(
                    subject, contracts.encode(msg), timeout=timeout, headers=telemetry.inject({})
                )
            except NoRespondersError:
                raise RpcError("unavailable", f"no service answers {subject}") from None
            except (TimeoutError, NatsTimeout):
                raise RpcError("timeout", f"{subject} did not answer within {timeout:g}s") from None
            headers = reply.headers or {}
            if ERROR_CODE_HEADER in headers:
                raise RpcError(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
            return contracts.decoder(reply_type).decode(reply.data)

    def _send_span(
        self, name: str, kind: trace.SpanKind, subject: str, msg: msgspec.Struct, *, msg_id: str | None = None
    ) -> AbstractContextManager[trace.Span]:
        """The span of sending `msg` on `subject` ("send <name>", by the messaging
        conventions), with the video it is about when it names one."""
        return telemetry.tracer.start_as_current_span(
            f"send {name}",
            kind=kind,
            attributes=telemetry.messaging_attributes(
                "send",
                subject,
                **{
                    "messaging.message.id": msg_id,
                    "vidmesh.video.id": getattr(msg, "video_id", None),
                    "vidmesh.tenant": getattr(msg, "tenant", None),
                },
            ),
        )

    async def video_deleted(self, tenant: str, video_id: str) -> bool:
        """Whether the video was deleted, asked of the events stream (the facts every service
        may read) with Direct Get, so workers drop or abandon its tasks within a second.

        A failed video keeps its tasks running: a replayed dead letter can still recover it.
        """
        subject = f"{topology.SUBJECTS[VideoDeleted]}.{tenant}.{video_id}"
        try:
            await self.js.get_last_msg(topology.EVENTS, subject, direct=True)
            return True
        except NotFoundError:
            return False

    async def close(self) -> None:
        # The consumer loops have already finished or nak'ed their messages, so a plain
        # flush + close is enough (nc.drain() would wait on the stopped fetch inboxes).
        if self.nc.is_connected:
            try:
                await self.nc.flush(timeout=2)
            except Exception:
                pass
        try:
            await self.nc.close()
        except (ConnectionError, OSError) as exc:
            # the server is away (stopping while it restarts): nothing is left to flush
            log.info("nats connection closed while the server was away: %s", exc)


async def kv_write(kv: KeyValue, key: str, value: bytes, revision: int | None, *, ttl_s: float | None = None) -> int:
    """Compare-and-set: create when `revision` is None, else update from `revision`. With
    `ttl_s` the server removes the entry after that long (a tombstone that must not stay
    forever); raises KeyWrongLastSequenceError when another writer got there first."""
    if revision is None:
        return await kv.create(key, value, msg_ttl=ttl_s)
    return await kv._update(key, value, last=revision, msg_ttl=ttl_s)  # update() takes no TTL (nats-py 2.16)


class KvContention(Exception):
    """kv_update gave up: every one of its compare-and-set writes lost to another writer."""

    def __init__(self, key: str, attempts: int):
        super().__init__(f"{key} changed under each of {attempts} compare-and-set attempts")
        self.key = key
        self.attempts = attempts


# What a kv_update change returns: the new value, the new value with its own TTL, or None (no write).
Decision = bytes | tuple[bytes, float | None] | None


async def kv_update(
    kv: KeyValue,
    key: str,
    change: Callable[[bytes | None], Decision | Awaitable[Decision]],
    *,
    attempts: int = 10,
    ttl_s: float | None = None,
) -> bytes | None:
    """Read-modify-write of one KV entry by compare-and-set, retried while other writers get
    in between the read and the write.

    `change(current)` gets the entry's value (bytes), or None when the key is absent (never
    written, deleted, or removed by its TTL), and returns one of:
    - the new value (bytes), written with `ttl_s` (None: the entry stays until replaced);
    - a `(value, ttl_s)` pair, when the TTL depends on the value (a tombstone that must
      not stay forever); this write's TTL replaces the call's;
    - None: leave the entry as it is (nothing is written, the update is over).
    It may be a plain function or a coroutine function. It runs once per attempt, each time
    on a fresh read, so what it decides must come from that read alone. An exception it
    raises ends the update with nothing written and propagates as is.

    An absent key is created (a create that finds the key written meanwhile is a lost race
    too), an existing one updated from the revision that was read.

    Returns the value the key holds after the call as far as this writer knows: what it
    wrote, or what `change` left as is (None for an absent key it did not create).

    Raises KvContention after `attempts` writes that each lost the race
    (KeyWrongLastSequenceError, or KeyNotFoundError when nats-py's create sees the key
    vanish in between), chained from the last of them. Any other error of the read or the
    write (a timeout, a lost connection) propagates at once: retrying it here would only
    hide it from the caller's own retry policy.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    lost: Exception | None = None
    for _ in range(attempts):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # deleted or purged entries too
            entry = None
        current = entry.value if entry is not None else None
        new = change(current)
        if inspect.isawaitable(new):
            new = await new
        if new is None:
            return current
        value, ttl = new if isinstance(new, tuple) else (new, ttl_s)
        try:
            await kv_write(kv, key, value, entry.revision if entry is not None else None, ttl_s=ttl)
            return value
        except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
            lost = exc  # another writer got in between: read again and decide again
    raise KvContention(key, attempts) from lost

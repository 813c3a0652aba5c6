"""What one service does with the bus, said once: the `Declaration` in its folder.

Each service has `services/<name>/declaration.py` holding one `DECLARATION`. Everything
else is derived from the declarations (`services/mesh.py` discovers them): the durable
consumers the topology creates, each NATS user's permissions, the processes `vidmesh up`
starts, the AsyncAPI document. At run time the declaration is also checked: a handler
registered for a consumer or endpoint it did not declare fails at import, a publish or
request on an undeclared subject fails before it reaches NATS (`UndeclaredSubject`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import topology


@dataclass(frozen=True)
class ConsumerSpec:
    """One durable pull consumer, shared by every replica of the service that pulls it.

    On a media work queue (`topology.MEDIA_TASK_STREAMS`) `ack_wait_s` (seconds) and
    `max_deliver` come from VIDMESH_TASK_ACK_WAIT_S / VIDMESH_TASK_MAX_DELIVER instead.
    """

    stream: str
    durable: str
    filters: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000

    @property
    def is_task(self) -> bool:
        """Whether it pulls a media work queue (the VIDMESH_TASK_* settings apply)."""
        return self.stream in topology.MEDIA_TASK_STREAMS

    def delivery(self, settings: TaskDelivery) -> tuple[int, float]:
        """(max deliver, ack wait in seconds) as the server and the consumer loop apply them."""
        if self.is_task:
            return settings.task_max_deliver, settings.task_ack_wait_s
        return self.max_deliver, self.ack_wait_s


class TaskDelivery(Protocol):
    """The settings a media work queue's consumer takes its delivery limits from."""

    task_max_deliver: int
    task_ack_wait_s: float


def every(kind: type) -> str:
    """Every subject of one message type: any tenant, any video."""
    return topology.SUBJECTS[kind] + ".>"


class UndeclaredSubject(RuntimeError):
    """A service published or requested on a subject its declaration does not name."""


WATCH_ALL = "*"  # `watches`: the lag of every durable consumer of the mesh


@dataclass(frozen=True)
class Declaration:
    """A service's bus contract. Subjects may use NATS wildcards (`*` one token, `>` the rest).

    publishes: message types (published on their subject, any tenant and video) or subjects.
    consumes: durable consumers it pulls. serves / calls: request-reply subjects.
    reads_kv / writes_kv: buckets (write implies read). media: "", "read" or "write".
    reads_messages / deletes_messages / purges: streams it gets, deletes or purges single
    messages in. follows: streams it tails with ephemeral ordered consumers. watches:
    streams whose durable consumers' lag it reads (or WATCH_ALL). inspects: further streams
    whose info it reads.
    public_http: its HTTP port is the mesh's front door (started last by `vidmesh up`).
    processes_setting: the setting holding how many processes `vidmesh up` starts (else 1).
    """

    name: str
    description: str
    publishes: tuple[type | str, ...] = ()
    consumes: tuple[ConsumerSpec, ...] = ()
    serves: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    reads_kv: tuple[str, ...] = ()
    writes_kv: tuple[str, ...] = ()
    media: str = ""
    reads_messages: tuple[str, ...] = ()
    deletes_messages: tuple[str, ...] = ()
    purges: tuple[str, ...] = ()
    follows: tuple[str, ...] = ()
    watches: tuple[str, ...] = ()
    inspects: tuple[str, ...] = ()
    public_http: bool = False
    processes_setting: str | None = None
    _patterns: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.media not in ("", "read", "write"):
            raise ValueError(f"{self.name}: media must be '', 'read' or 'write', not {self.media!r}")
        object.__setattr__(self, "_patterns", tuple(self.publish_subjects()))

    def publish_subjects(self) -> list[str]:
        """Its publishes as subject patterns, plus its own log records and metric samples."""
        found = [every(p) if isinstance(p, type) else p for p in self.publishes]
        return found + [f"{topology.LOG_PREFIX}.{self.name}", f"{topology.METRICS_PREFIX}.{self.name}"]

    def may_publish(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self._patterns)

    def may_call(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self.calls)

    def streams(self) -> list[str]:
        """Every stream it touches (consumers' streams, buckets, media...): what it checks at start."""
        names = {spec.stream for spec in self.consumes}
        names |= {s for s in self.watches if s != WATCH_ALL}
        names |= {kv_stream(b) for b in self.reads_kv + self.writes_kv}
        names |= set(self.reads_messages + self.deletes_messages + self.purges + self.follows + self.inspects)
        if self.media:
            names.add(topology.MEDIA_STREAM)
        return sorted(names)


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket."""
    return f"KV_{bucket}"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)

"""Server-side schedules (NATS message scheduler, ADR-51): declare, list, remove.

A schedule is one message on `scheduler.schedule.<name>` in the SCHEDULES stream
(allow_msg_schedules), with headers:
  Nats-Schedule         `@every 1m`, a 6-field cron `0 0 3 * * *` (UTC) or `@daily`...
  Nats-Schedule-Target  `<owner>.cmd.tick.<name>` (topology.tick_subject): the server
                        writes each tick there, into the same stream, with the
                        schedule's body (a ScheduleTick)
  Nats-Schedule-TTL     ticks nobody handled in time expire instead of piling up
The server keeps one schedule per subject (it adds `Nats-Rollup: sub`). Declaring is
idempotent and safe from any number of replicas starting at once: an unchanged schedule
is not republished (which would restart an `@every` interval), and a change is published
with `Nats-Expected-Last-Subject-Sequence`, so of two replicas racing only one writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nats.js.errors import APIError, NotFoundError

from shared import topology
from shared.contracts import ScheduleTick, encode

H_SCHEDULE = "Nats-Schedule"
H_TARGET = "Nats-Schedule-Target"
H_TTL = "Nats-Schedule-TTL"
WRONG_LAST_SEQUENCE = 10071  # JetStream err_code when the expected last sequence differs
DEFAULT_TICK_TTL_S = 3600
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Schedule:
    name: str
    spec: str  # the Nats-Schedule expression
    tick_ttl_s: int = DEFAULT_TICK_TTL_S

    @property
    def subject(self) -> str:
        return topology.schedule_subject(self.name)

    @property
    def target(self) -> str:
        return topology.tick_subject(self.name)

    @property
    def body(self) -> bytes:
        return encode(ScheduleTick(name=self.name))

    @property
    def headers(self) -> dict[str, str]:
        return {H_SCHEDULE: self.spec, H_TARGET: self.target, H_TTL: f"{self.tick_ttl_s}s"}


@dataclass(frozen=True)
class Definition:
    """A schedule as the server holds it."""

    name: str
    spec: str
    target: str
    tick_ttl: str | None
    seq: int


def every_seconds(spec: str) -> float | None:
    """The interval of an `@every <go duration>` schedule, in seconds."""
    if not spec.startswith("@every "):
        return None
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", spec[7:]):
        total += float(number) * _UNITS[unit]
    return total or None


def tick_ttl(spec: str) -> int:
    """How long a tick may wait for a scheduler: a few intervals, between 1 min and 1 h."""
    interval = every_seconds(spec)
    if interval is None:
        return DEFAULT_TICK_TTL_S
    return int(min(DEFAULT_TICK_TTL_S, max(60.0, 5 * interval)))


def configured(settings) -> tuple[list[Schedule], list[str]]:
    """(schedules to declare, names switched off) from VIDMESH_SCHEDULE_*."""
    wanted, off = [], []
    for name, spec in sorted(settings.schedules.items()):
        if spec == "off":
            off.append(name)
        else:
            wanted.append(Schedule(name, spec, tick_ttl(spec)))
    return wanted, off


async def declare(js, schedule: Schedule) -> str:
    """Make the server hold `schedule`; returns "created", "updated" or "unchanged"."""
    for _ in range(5):
        current = await _last(js, schedule.subject)
        if current is not None and _same(current, schedule):
            return "unchanged"
        headers = {**schedule.headers, "Nats-Expected-Last-Subject-Sequence": str(current.seq if current else 0)}
        try:
            await js.publish(schedule.subject, schedule.body, headers=headers)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                continue  # another replica declared it meanwhile: compare with theirs
            raise
        return "updated" if current is not None else "created"
    raise RuntimeError(f"schedule {schedule.name}: kept losing the race to declare it")


async def remove(js, name: str) -> bool:
    """Stop a schedule (purging its subject removes it from the server's scheduler)."""
    if await _last(js, topology.schedule_subject(name)) is None:
        return False
    await js.purge_stream(topology.SCHEDULES, subject=topology.schedule_subject(name))
    return True


async def definitions(js) -> list[Definition]:
    """Every schedule the server holds, by name."""
    info = await js.stream_info(topology.SCHEDULES, subjects_filter=topology.SCHEDULE_PREFIX + ".>")
    found = []
    for subject in sorted(info.state.subjects or {}):
        msg = await _last(js, subject)
        if msg is None:
            continue
        headers = msg.headers or {}
        found.append(
            Definition(
                name=subject[len(topology.SCHEDULE_PREFIX) + 1 :],
                spec=headers.get(H_SCHEDULE, ""),
                target=headers.get(H_TARGET, ""),
                tick_ttl=headers.get(H_TTL),
                seq=msg.seq,
            )
        )
    return found


def _same(msg, schedule: Schedule) -> bool:
    headers = msg.headers or {}
    return msg.data == schedule.body and all(headers.get(k) == v for k, v in schedule.headers.items())


async def _last(js, subject: str):
    try:
        return await js.get_last_msg(topology.SCHEDULES, subject)
    except NotFoundError:
        return None

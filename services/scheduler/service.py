"""scheduler: declares the server-side schedules and handles the ticks they fire.

There is no scheduling loop here: the NATS server fires the schedules (ADR-51 message
scheduler) into the SCHEDULES stream, and every scheduler replica pulls from the one
work-queue consumer on the ticks, so each tick is handled once however many replicas run,
and none of them is special (losing one loses nothing; in a cluster the stream's leader
fires). At start-up each replica declares the schedules (idempotent, see schedules.py).

Jobs (jobs.py): `retention`, `redrive`, `usage_report`, `upload_expiry`. Schedules come from
VIDMESH_SCHEDULE_<NAME> (`off` removes one); `vidmesh schedules` lists them and their last
run, `vidmesh schedules run NAME` fires one by hand (admin.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from shared import topology
from shared.bus import Bus, KvContention, kv_update
from shared.consumer import Delivery, Poison
from shared.contracts import ScheduleTick
from shared.kvscan import entries
from shared.service import Service

from . import declaration, jobs, schedules

log = logging.getLogger("vidmesh.scheduler")

service = Service(declaration.DECLARATION)

Job = Callable[[Bus, float], Awaitable[dict]]

JOBS: dict[str, Job] = {
    "retention": jobs.retention,
    "redrive": jobs.redrive,
    "usage_report": jobs.usage_report,
    "upload_expiry": jobs.upload_expiry,
}
DESCRIPTIONS = {
    "retention": "delete videos older than VIDMESH_RETENTION_DAYS (per-tenant overrides)",
    "redrive": "publish again the lost tasks of stuck videos; fail them after N attempts",
    "usage_report": "one usage report per tenant for the previous UTC day",
    "upload_expiry": "remove expired resumable uploads (state and chunks) and direct-upload URLs",
}


def register(name: str, job: Job, description: str = "") -> None:
    """Add a job (a schedule named `name` then runs it)."""
    JOBS[name] = job
    DESCRIPTIONS[name] = description


@service.on_startup
async def declare_schedules(bus: Bus) -> None:
    wanted, off = schedules.configured(bus.settings)
    for schedule in wanted:
        outcome = await schedules.declare(bus.js, schedule)
        log.info("schedule %s (%s): %s", schedule.name, schedule.spec, outcome)
    for name in off:
        if await schedules.remove(bus.js, name):
            log.info("schedule %s: removed (off)", name)


@service.consumer(declaration.TICKS, ScheduleTick)
async def on_tick(tick: ScheduleTick, delivery: Delivery) -> None:
    job = JOBS.get(tick.name)
    if job is None:
        raise Poison("unknown_schedule", f"no job named {tick.name!r}; known: {sorted(JOBS)}")
    meta = delivery.msg.metadata
    fired_at = meta.timestamp.timestamp()
    now = tick.as_of if tick.as_of is not None else fired_at
    run = Run(
        name=tick.name,
        seq=meta.sequence.stream,
        fired_at=fired_at,
        as_of=now,
        started_at=time.time(),
        manual=tick.manual,
        next_at=(delivery.msg.headers or {}).get(schedules.H_NEXT),
    )
    try:
        summary = await job(delivery.bus, now)
    except Exception as exc:
        await record(delivery.bus, run, outcome="error", error=str(exc)[:300])
        raise
    await record(delivery.bus, run, outcome="ok", summary=summary)
    log.info("%s done in %.2fs: %s", tick.name, time.time() - run.started_at, summary)


# --- run records (the scheduler's own bucket) -----------------------------------------------


class Run(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    seq: int  # the tick's stream sequence
    fired_at: float
    as_of: float
    started_at: float
    manual: bool = False
    next_at: str | None = None  # Nats-Schedule-Next of the tick: when the server fires again


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    seq: int  # the tick's stream sequence
    outcome: str  # ok | error
    finished_at: float
    summary: dict[str, str | int | float] = {}
    error: str | None = None


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The last run of a schedule, and the results of the last ticks (`run --wait` finds
    its own there, even when a scheduled run of the same job finished in between)."""

    name: str
    runs: int = 0
    last: Run | None = None
    outcome: str | None = None  # ok | error
    error: str | None = None
    finished_at: float | None = None
    summary: dict[str, str | int | float] = {}
    recent: list[RunResult] = []

    def result(self, seq: int) -> RunResult | None:
        return next((r for r in reversed(self.recent) if r.seq == seq), None)


run_encoder = msgspec.json.Encoder()
run_decoder = msgspec.json.Decoder(RunRecord)


def run_key(name: str) -> str:
    return f"run.{name}"


async def record(bus: Bus, run: Run, *, outcome: str, summary: dict | None = None, error: str | None = None) -> None:
    kv = await bus.kv(topology.KV_SCHEDULER)

    def add_run(value: bytes | None) -> bytes:
        current = run_decoder.decode(value) if value is not None else RunRecord(name=run.name)
        finished = time.time()
        result = RunResult(seq=run.seq, outcome=outcome, finished_at=finished, summary=summary or {}, error=error)
        new = RunRecord(
            name=run.name,
            runs=current.runs + 1,
            last=run,
            outcome=outcome,
            error=error,
            finished_at=finished,
            summary=summary or {},
            recent=[*current.recent, result][-20:],
        )
        return run_encoder.encode(new)

    try:
        await kv_update(kv, run_key(run.name), add_run, attempts=10)
    except KvContention:
        log.warning("could not record the run of %s (contention)", run.name)


async def last_runs(bus: Bus) -> dict[str, RunRecord]:
    return {e.key[4:]: run_decoder.decode(e.value) async for e in entries(bus.js, topology.KV_SCHEDULER, "run.*")}

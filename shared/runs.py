"""Run records of scheduled jobs: what `vidmesh schedules` shows for each schedule.

A schedule's ticks are handled by the service that owns what its job acts on (the
scheduler for most, the pipeline for `redrive`, see `topology.tick_subject`). That service
runs the job with `run_tick` and records the run in its own bucket, key `run.<name>`; the
CLI reads every such bucket (`topology.RUN_BUCKETS`, `last_runs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from . import topology
from .bus import Bus, KvContention, kv_update
from .consumer import Delivery
from .contracts import RunRecord, RunResult, ScheduleRun, ScheduleTick, decoder, encode
from .kvscan import entries

log = logging.getLogger("vidmesh.schedules")

H_NEXT = "Nats-Schedule-Next"  # on a tick: when the server fires the schedule again

# What a job reports of its run (RunResult.summary): counts, mostly.
Summary = dict[str, str | int | float]
# `async def job(bus, now) -> summary`, `now` the tick's time (unix s), never the wall clock
Job = Callable[[Bus, float], Awaitable[Summary]]


run_decoder = decoder(RunRecord)


def run_key(name: str) -> str:
    return f"run.{name}"


async def run_tick(tick: ScheduleTick, delivery: Delivery, job: Job, bucket: str) -> Summary:
    """Run `job` for one tick (at the tick's `as_of`, else when it fired) and record the run,
    ok or error, in `bucket`; an error is raised again after it is recorded."""
    meta = delivery.msg.metadata
    fired_at = meta.timestamp.timestamp()
    now = tick.as_of if tick.as_of is not None else fired_at
    run = ScheduleRun(
        name=tick.name,
        seq=delivery.seq,
        fired_at=fired_at,
        as_of=now,
        started_at=time.time(),
        manual=tick.manual,
        next_at=(delivery.msg.headers or {}).get(H_NEXT),
    )
    try:
        summary = await job(delivery.bus, now)
    except Exception as exc:
        await record(delivery.bus, bucket, run, outcome="error", error=str(exc)[:300])
        raise
    await record(delivery.bus, bucket, run, outcome="ok", summary=summary)
    log.info("%s done in %.2fs: %s", tick.name, time.time() - run.started_at, summary)
    return summary


async def record(
    bus: Bus, bucket: str, run: ScheduleRun, *, outcome: str, summary: Summary | None = None, error: str | None = None
) -> None:
    kv = await bus.kv(bucket)

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
        return encode(new)

    try:
        await kv_update(kv, run_key(run.name), add_run, attempts=10)
    except KvContention:
        log.warning("could not record the run of %s (contention)", run.name)


async def last_runs(bus: Bus, buckets: tuple[str, ...] = topology.RUN_BUCKETS) -> dict[str, RunRecord]:
    """The run record of every schedule that ran, by name, from the buckets of the services
    that handle ticks."""
    found: dict[str, RunRecord] = {}
    for bucket in buckets:
        async for e in entries(bus.js, bucket, "run.*"):
            found[e.key[len("run.") :]] = run_decoder.decode(e.value)
    return found

"""scheduler: declares the server-side schedules and handles the ticks they fire.

There is no scheduling loop here: the NATS server fires the schedules (ADR-51 message
scheduler) into the SCHEDULES stream, and every scheduler replica pulls from the one
work-queue consumer on the ticks, so each tick is handled once however many replicas run,
and none of them is special (losing one loses nothing; in a cluster the stream's leader
fires). At start-up each replica declares the schedules (idempotent, see schedules.py).

Jobs (jobs.py): `retention`, `usage_report`, `upload_expiry`. The `redrive` schedule is
declared here too, but its ticks go to the pipeline, which re-drives its own jobs
(topology.tick_subject). Schedules come from VIDMESH_SCHEDULE_<NAME> (`off` removes one);
`vidmesh schedules` lists them and their last run, `vidmesh schedules run NAME` fires one by
hand (admin.py).
"""

from __future__ import annotations

import logging

from shared import runs, topology
from shared.bus import Bus
from shared.consumer import Delivery, Poison
from shared.contracts import ScheduleTick
from shared.service import Service

from . import declaration, jobs, schedules
from .settings import SchedulerSettings

log = logging.getLogger("vidmesh.scheduler")

service = Service(declaration.DECLARATION, settings=SchedulerSettings)

JOBS: dict[str, runs.Job] = {
    "retention": jobs.retention,
    "usage_report": jobs.usage_report,
    "upload_expiry": jobs.upload_expiry,
}
# Every schedule this service declares, its own jobs and the pipeline's (PIPELINE_SCHEDULES)
DESCRIPTIONS = {
    "retention": "delete videos older than VIDMESH_RETENTION_DAYS (per-tenant overrides)",
    "redrive": "publish again the lost tasks of stuck videos; fail them after N attempts (pipeline)",
    "usage_report": "one usage report per tenant for the previous UTC day",
    "upload_expiry": "remove expired resumable uploads (state and chunks) and direct-upload URLs",
}


def register(name: str, job: runs.Job, description: str = "") -> None:
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
    if tick.name in topology.PIPELINE_SCHEDULES:
        # fired on this prefix before the schedule was declared with the pipeline's target:
        # the pipeline handles the next tick, so this one is dropped, not dead-lettered
        log.info("tick of %s on %s: handled by the pipeline, dropped", tick.name, delivery.subject)
        return
    job = JOBS.get(tick.name)
    if job is None:
        raise Poison("unknown_schedule", f"no job named {tick.name!r}; known: {sorted(JOBS)}")
    await runs.run_tick(tick, delivery, job, topology.KV_SCHEDULER)

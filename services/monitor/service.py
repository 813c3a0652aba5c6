"""monitor: alert rules over logs, metrics and consumer lag; the backpressure signal.

It consumes the log records and metric samples every service publishes, reads the lag of
every durable consumer and the dead-letter count, evaluates the rules (rules.py) every
VIDMESH_MONITOR_INTERVAL_S, announces alert changes as events, and keeps two keys in its
KV bucket: `alerts` (what fires now) and `load` (the transcode backlog against
VIDMESH_MAX_BACKLOG), which the gateway reads to answer 429. Run one replica: the rules
keep their window in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from services import mesh
from shared import contracts, topology
from shared.bus import Bus
from shared.consumer import Delivery
from shared.service import Service

from . import declaration
from .rules import Observations, Thresholds, diff, evaluate
from .settings import MonitorSettings

log = logging.getLogger("vidmesh.monitor")

service = Service(declaration.DECLARATION, settings=MonitorSettings)


class State:
    def __init__(self):
        self.obs = Observations()
        self.firing: dict[tuple[str, str], contracts.Alert] = {}
        self.load: contracts.LoadState | None = None


state = State()


@service.consumer(declaration.INPUT, contracts.OpsEvent, concurrency=8)
async def on_ops_event(event, delivery: Delivery) -> None:
    if isinstance(event, contracts.MetricSample):
        state.obs.add_sample(event)
    elif isinstance(event, contracts.LogRecord):
        state.obs.seen(event.service, event.time)


@service.endpoint(topology.RPC_MONITOR_ALERTS)
async def get_alerts(req: contracts.GetAlerts, bus: Bus) -> contracts.AlertList:
    return contracts.AlertList(alerts=sorted(state.firing.values(), key=lambda a: a.since), load=state.load)


@service.on_startup
async def start_rules(bus: Bus) -> None:
    service.background(evaluate_forever(bus))


async def evaluate_forever(bus: Bus) -> None:
    settings = bus.settings
    # Each threshold is the setting of its name with `alert_` before it (VIDMESH_ALERT_LAG...).
    t = Thresholds(**{f.name: getattr(settings, f"alert_{f.name}") for f in dataclasses.fields(Thresholds)})
    kv = await bus.kv(topology.KV_MONITOR)
    while True:
        try:
            await evaluate_once(bus, kv, t)
        except Exception as exc:  # NATS away: try again next round
            log.warning("monitor round failed: %s", exc)
        await asyncio.sleep(settings.monitor_interval_s)


async def evaluate_once(bus: Bus, kv, t: Thresholds) -> list[tuple[contracts.Alert, str]]:
    now = time.time()
    for spec in mesh.watched(declaration.DECLARATION):
        try:
            info = await bus.js.consumer_info(spec.stream, spec.durable)
        except Exception:
            continue
        state.obs.lag[spec.durable] = info.num_pending + info.num_ack_pending
    state.obs.dead_letters = (await bus.js.stream_info(topology.DEADLETTER)).state.messages

    backlog = sum(state.obs.lag.get(s.durable, 0) for s in mesh.consumers() if s.stream == topology.TASKS_TRANSCODE)
    state.load = contracts.LoadState(
        backlog=backlog,
        max_backlog=bus.settings.max_backlog,
        overloaded=backlog > bus.settings.max_backlog,
        updated_at=now,
    )
    await kv.put("load", contracts.encode(state.load))

    state.firing, changes = diff(state.firing, evaluate(state.obs, now, t), now)
    for alert, change in changes:
        log.warning("alert %s %s/%s: %s", change, alert.rule, alert.subject, alert.message)
        await bus.publish(
            contracts.AlertChanged(alert=alert, state=change),
            subject=f"{topology.ALERT_PREFIX}.{alert.rule}",
            msg_id=f"{alert.rule}:{alert.subject}:{alert.since}:{change}",
        )
    await kv.put("alerts", contracts.encode(contracts.AlertList(alerts=list(state.firing.values()), load=state.load)))
    return changes

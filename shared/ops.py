"""Logs and metrics as events: every service publishes its log records and a periodic
metric sample on the bus, where the monitor turns them into alerts.

Records are queued by a logging handler (never blocking the code that logs) and published
with core NATS (fire and forget: the OPS stream captures them; losing a few while NATS is
away is acceptable, blocking a service on its own logging is not).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time

from nats.aio.msg import Msg

from . import contracts, telemetry, topology
from .bus import Bus

LOG_LEVEL_SUBJECT = "ops.cmd.log_level"  # core request: {"service": "*"|name, "level": "DEBUG"}


class BusLogHandler(logging.Handler):
    def __init__(self, service: str, level: str):
        super().__init__(level)
        self.service = service
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.queue: collections.deque[contracts.LogRecord] = collections.deque(
            maxlen=2000
        )  # drops the oldest under a storm
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.queue.append(
            contracts.LogRecord(
                service=self.service,
                instance=self.instance,
                time=record.created,
                level=record.levelname,
                logger=record.name,
                message=message[:4000],
                trace_id=telemetry.current_trace_id(),
            )
        )


def metric_sample(service: str, instance: str, errors: int) -> contracts.MetricSample:
    from .consumer import DEAD_LETTERED, PROCESSED  # the counters this process keeps

    messages: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for family in PROCESSED.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                messages[s.labels["consumer"]][s.labels["outcome"]] = s.value
    dead = sum(s.value for family in DEAD_LETTERED.collect() for s in family.samples if s.name.endswith("_total"))
    return contracts.MetricSample(
        service=service,
        instance=instance,
        time=time.time(),
        messages=dict(messages),
        dead_letters=dead,
        errors_logged=errors,
    )


async def publish_forever(bus: Bus, handler: BusLogHandler, interval_s: float) -> None:
    """Pump queued log records out every half second and a metric sample every interval."""

    async def set_level(msg: Msg) -> None:
        try:
            wanted = contracts.decoder(dict).decode(msg.data)
            if wanted.get("service", "*") in ("*", handler.service):
                handler.setLevel(str(wanted["level"]).upper())
                if msg.reply:
                    level = logging.getLevelName(handler.level)
                    await msg.respond(f'{{"service":"{handler.service}","level":"{level}"}}'.encode())
        except Exception:
            pass  # a bad level request must not take logging down

    await bus.nc.subscribe(LOG_LEVEL_SUBJECT, cb=set_level)
    next_sample = 0.0
    while True:
        try:
            while handler.queue:
                record = handler.queue.popleft()
                await bus.nc.publish(f"{topology.LOG_PREFIX}.{handler.service}", contracts.encode(record))
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + interval_s
                sample = metric_sample(handler.service, handler.instance, handler.errors)
                await bus.nc.publish(f"{topology.METRICS_PREFIX}.{handler.service}", contracts.encode(sample))
        except Exception:
            pass  # NATS away: records stay queued (bounded) until it is back
        await asyncio.sleep(0.5)

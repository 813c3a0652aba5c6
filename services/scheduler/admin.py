"""`vidmesh schedules`: list the server-side schedules and their last runs; run one now.

`run NAME` publishes a manual tick where the server's ticks of NAME go (the pipeline's
prefix for `redrive`, see topology.tick_subject), so a running replica of the service that
handles them runs it exactly like a scheduled one (and records the run in its bucket);
with `--wait` (the default) it waits for that record.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import nats
import typer
from rich.console import Console
from rich.table import Table

from shared import permissions, topology
from shared.bus import Bus
from shared.contracts import RunRecord, RunResult, ScheduleTick
from shared.runs import last_runs

from . import schedules
from .service import DESCRIPTIONS, JOBS
from .settings import SchedulerSettings

app = typer.Typer(help="Server-side schedules: list them, run one now", invoke_without_command=True)
console = Console()


async def rows(bus: Bus) -> list[dict]:
    """One row per schedule: declared on the server, configured, or run before."""
    declared = {d.name: d for d in await schedules.definitions(bus.js)}
    runs = await last_runs(bus)
    names = sorted(set(declared) | set(bus.settings.schedules) | set(runs))
    found = []
    for name in names:
        d, r = declared.get(name), runs.get(name)
        found.append(
            {
                "name": name,
                "schedule": d.spec if d else "off",
                "target": d.target if d else None,
                "job": DESCRIPTIONS.get(name, "(no such job here)" if name not in JOBS else ""),
                "runs": r.runs if r else 0,
                "last_run": _when(r.finished_at) if r and r.finished_at else None,
                "outcome": r.outcome if r else None,
                "summary": r.summary if r else {},
                "error": r.error if r else None,
                "next": r.last.next_at if r and r.last and not r.last.manual else None,
            }
        )
    return found


async def run_now(bus: Bus, name: str, *, as_of: float | None = None, wait: bool = True, timeout: float = 120.0):
    """Fire `name` now; returns (tick seq, its RunResult, or None if not waited / timed out)."""
    tick = ScheduleTick(name=name, as_of=as_of, manual=True)
    seq = await bus.publish(tick, msg_id=f"manual:{name}:{time.time_ns()}", subject=topology.tick_subject(name))
    if not wait:
        return seq, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = (await last_runs(bus)).get(name)
        result = record.result(seq) if record else None
        if result is not None:
            return seq, result
        await asyncio.sleep(0.2)
    return seq, None


def parse_as_of(text: str | None) -> float | None:
    """A unix time or an ISO 8601 date/time (UTC when no zone is given)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"--as-of must be a unix time or an ISO date, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def _connected() -> Bus:
    settings = SchedulerSettings.load()
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"

    async def quiet(exc):  # the failure is reported once, below
        pass

    admin_user, admin_password = permissions.credentials(settings, permissions.ADMIN)  # or `vidmesh up`'s admin
    try:
        nc = await nats.connect(
            url.split(","),
            user=admin_user,
            password=admin_password,
            connect_timeout=3,
            max_reconnect_attempts=1,
            allow_reconnect=False,
            error_cb=quiet,
        )
    except Exception as exc:
        console.print(f"cannot reach NATS at {url} ({type(exc).__name__}); is the mesh up? (NATS_URL)")
        raise typer.Exit(2) from None
    return Bus(nc, settings, "cli")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.callback()
def list_schedules(ctx: typer.Context) -> None:
    """List the schedules the server holds, with each one's last run.

    retention: delete videos older than VIDMESH_RETENTION_DAYS (per-tenant overrides);
    redrive: publish the lost tasks of stuck videos again, fail them after N attempts;
    usage_report: one usage report per tenant for the previous UTC day."""
    if ctx.invoked_subcommand is not None:
        return

    async def go():
        bus = await _connected()
        try:
            return await rows(bus)
        finally:
            await bus.close()

    found = asyncio.run(go())
    table = Table(title="schedules (times UTC)")
    for column, key in (("name", "name"), ("schedule", "schedule"), ("runs", "runs"), ("last run", "last_run")):
        width = max([len(column)] + [len(str(row[key] or "-")) for row in found])
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("outcome", ratio=1)
    table.add_column("next", no_wrap=True)
    for row in found:
        outcome = row["outcome"] or ""
        if row["summary"]:
            outcome += " " + ", ".join(f"{k}={v}" for k, v in row["summary"].items())
        if row["error"]:
            outcome += f" ({row['error']})"
        table.add_row(
            row["name"], row["schedule"], str(row["runs"]), row["last_run"] or "-", outcome or "-", row["next"] or "-"
        )
    console.print(table)


@app.command("run")
def run(
    name: str = typer.Argument(..., help="the schedule (job) to run now"),
    wait: bool = typer.Option(True, help="wait until a replica of the service handling it has run it"),
    timeout: float = typer.Option(120.0, help="how long to wait, in seconds"),
    as_of: str = typer.Option(None, "--as-of", help="run as if at this time (unix time or ISO date, UTC)"),
) -> None:
    """Fire one schedule now, through the same work queue as the server's ticks."""
    if name not in DESCRIPTIONS:
        raise typer.BadParameter(f"unknown schedule {name!r}; choose from {', '.join(sorted(DESCRIPTIONS))}")
    when = parse_as_of(as_of)

    async def go():
        bus = await _connected()
        try:
            return await run_now(bus, name, as_of=when, wait=wait, timeout=timeout)
        finally:
            await bus.close()

    seq, result = asyncio.run(go())
    if not wait:
        console.print(f"{name}: tick {seq} queued")
        return
    if result is None:
        console.print(f"{name}: tick {seq} queued, but no replica finished it within {timeout:g}s")
        raise typer.Exit(1)
    summary = ", ".join(f"{k}={v}" for k, v in result.summary.items())
    console.print(f"{name}: {result.outcome} {summary}" + (f" ({result.error})" if result.error else ""))
    raise typer.Exit(0 if result.outcome == "ok" else 1)


__all__ = ["app", "rows", "run_now", "parse_as_of", "RunRecord", "RunResult"]

"""`vidmesh dlq`: inspect and re-drive the dead-letter stream (an operator's tool).

Each dead letter is the original message (payload and headers, trace context included)
plus `Vidmesh-Dead-*` headers saying where it came from and why it was given up. A replay
publishes it again on its original subject and removes it from the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import nats
import typer
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from shared import permissions, topology
from shared.settings import Settings

app = typer.Typer(help="Inspect and replay dead-lettered messages", no_args_is_help=True)
console = Console()


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    time: str
    subject: str
    stream: str
    consumer: str
    deliveries: int
    reason: str
    headers: dict
    payload: str


def _letter(msg) -> DeadLetter:
    h = msg.headers or {}
    return DeadLetter(
        id=msg.seq,
        time=msg.time.isoformat() if getattr(msg, "time", None) else "",
        subject=h.get("Vidmesh-Dead-Subject", ""),
        stream=h.get("Vidmesh-Dead-Stream", ""),
        consumer=h.get("Vidmesh-Dead-Consumer", ""),
        deliveries=int(h.get("Vidmesh-Dead-Deliveries", "0") or 0),
        reason=h.get("Vidmesh-Dead-Reason", ""),
        headers=dict(h),
        payload=(msg.data or b"").decode(errors="replace"),
    )


async def _connect():
    settings = Settings.load()
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"
    user, password = permissions.credentials(settings, permissions.ADMIN)  # NATS_USER, or `vidmesh up`'s admin
    nc = await nats.connect(url.split(","), user=user, password=password)
    return nc, nc.jetstream()


async def letters(js, limit: int = 1000) -> list[DeadLetter]:
    info = await js.stream_info(topology.DEADLETTER)
    found = []
    seq = info.state.first_seq
    while seq and seq <= info.state.last_seq and len(found) < limit:
        try:
            found.append(_letter(await js.get_msg(topology.DEADLETTER, seq)))
        except NotFoundError:
            pass  # replayed (deleted) earlier
        seq += 1
    return found


async def replay(js, letter_id: int) -> str:
    msg = await js.get_msg(topology.DEADLETTER, letter_id)
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Vidmesh-Dead-")}
    subject = (msg.headers or {})["Vidmesh-Dead-Subject"]
    # a fresh msg-id: the original one may still be inside the duplicate window
    headers["Nats-Msg-Id"] = f"replay:{letter_id}:{time.time_ns()}"
    await js.publish(subject, msg.data or b"", headers=headers)
    await js.delete_msg(topology.DEADLETTER, letter_id)
    return subject


def _run(coro_fn):
    async def main():
        nc, js = await _connect()
        try:
            return await coro_fn(js)
        finally:
            await nc.close()

    return asyncio.run(main())


@app.command("list")
def list_cmd(limit: int = typer.Option(100, help="at most this many"), as_json: bool = typer.Option(False, "--json")):
    """Dead letters, oldest first."""
    found = _run(lambda js: letters(js, limit))
    if as_json:
        print(json.dumps([msgspec.to_builtins(d) for d in found]))
        return
    table = Table("id", "time", "from", "subject", "deliveries", "reason")
    for d in found:
        table.add_row(str(d.id), d.time[:19], f"{d.stream}/{d.consumer}", d.subject, str(d.deliveries), d.reason[:80])
    console.print(table if found else "no dead letters")


@app.command()
def show(letter_id: int, as_json: bool = typer.Option(False, "--json")):
    """One dead letter: where it came from, why, its headers and payload."""
    try:
        letter = _run(lambda js: js.get_msg(topology.DEADLETTER, letter_id))
    except NotFoundError:
        console.print(f"[red]no dead letter {letter_id}[/red]")
        raise typer.Exit(1) from None
    d = _letter(letter)
    if as_json:
        print(json.dumps(msgspec.to_builtins(d)))
        return
    console.print(f"[bold]dead letter {d.id}[/bold] from {d.stream}/{d.consumer} after {d.deliveries} deliveries")
    console.print(f"reason:  {d.reason}\nsubject: {d.subject}\ntime:    {d.time}")
    for key, value in d.headers.items():
        console.print(f"  {key}: {value}")
    try:
        console.print_json(d.payload)
    except Exception:
        console.print(d.payload)


@app.command("replay")
def replay_cmd(
    letter_id: int | None = typer.Argument(None, help="the dead letter to replay"),
    all_: bool = typer.Option(False, "--all", help="replay every dead letter"),
):
    """Publish dead letters again on their original subject."""
    if (letter_id is None) == (not all_):
        raise typer.BadParameter("give one ID or --all")

    async def go(js):
        ids = [d.id for d in await letters(js)] if all_ else [letter_id]
        done = []
        for i in ids:
            try:
                done.append((i, await replay(js, i)))
            except NotFoundError:
                console.print(f"[red]no dead letter {i}[/red]")
        return done

    done = _run(go)
    for i, subject in done:
        console.print(f"replayed {i} -> {subject}")
    if not done:
        raise typer.Exit(1)

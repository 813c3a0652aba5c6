"""The `vidmesh` command: run the mesh, or one service of it."""

from __future__ import annotations

import importlib

import typer

from .client import register as register_client_commands
from .mesh import names as service_names

cli = typer.Typer(help="vidmesh: video processing over NATS JetStream", no_args_is_help=True, add_completion=False)
register_client_commands(cli)  # upload, ls, status, download, url, rm, events: services/client.py


@cli.command()
def up() -> None:
    """Run the whole mesh: embedded nats-server (unless NATS_URL is set) and every service."""
    from .up import up as run_up

    raise typer.Exit(run_up())


@cli.command()
def init() -> None:
    """Create or update the topology (streams, consumers, buckets) as the NATS admin user."""
    from .up import init as run_init

    raise typer.Exit(run_init())


@cli.command("nats-config")
def nats_config(
    out: list[str] = typer.Option([], "--out", help="write here (repeatable); default: print"),
) -> None:
    """The NATS `authorization` block: every service's least-privilege user (services/nats_auth.py);
    passwords come from the server's environment ($VIDMESH_NATS_PASSWORD_<USER>)."""
    from pathlib import Path

    from .nats_auth import nats_users_conf

    text = nats_users_conf()
    if not out:
        typer.echo(text, nl=False)
    for path in out:
        Path(path).write_text(text)
        typer.echo(f"wrote {path}")


@cli.command()
def asyncapi(out: str = typer.Option("", "--out", help="write here; default: print")) -> None:
    """The bus as an AsyncAPI 3.0 JSON document (services/asyncapi.py), for this environment's
    settings; the gateway serves the same at /asyncapi.json."""
    from pathlib import Path

    from .asyncapi import render

    text = render()
    if not out:
        typer.echo(text, nl=False)
        return
    Path(out).write_text(text)
    typer.echo(f"wrote {out}")


@cli.command("webhook-key")
def webhook_key() -> None:
    """Print a new key for VIDMESH_WEBHOOK_KEYS (seals webhook secrets at rest)."""
    from .notifier.sealing import new_key

    typer.echo(new_key())


@cli.command()
def run(service: str = typer.Argument(..., help=f"one of: {', '.join(service_names())}")) -> None:
    """Run one service in this process (what a container runs)."""
    if service not in service_names():
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(service_names())}")
    from shared.service import run as serve

    module = importlib.import_module(f"services.{service}.service")
    serve(module.service)


from .dlq import app as dlq_app  # noqa: E402

cli.add_typer(dlq_app, name="dlq")

from .scheduler.admin import app as schedules_app  # noqa: E402

cli.add_typer(schedules_app, name="schedules")  # list, run NAME: services/scheduler/admin.py


def main() -> None:
    cli()

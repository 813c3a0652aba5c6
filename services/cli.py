"""The `vidmesh` command: run the mesh, or one service of it."""

from __future__ import annotations

import importlib

import typer

from .up import SERVICES

cli = typer.Typer(help="vidmesh: video processing over NATS JetStream", no_args_is_help=True, add_completion=False)


@cli.command()
def up() -> None:
    """Run the whole mesh: embedded nats-server (unless NATS_URL is set) and every service."""
    from .up import up as run_up

    raise typer.Exit(run_up())


@cli.command()
def run(service: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}")) -> None:
    """Run one service in this process (what a container runs)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    from shared.service import run as serve

    module = importlib.import_module(f"services.{service}.service")
    serve(module.service)


def main() -> None:
    cli()

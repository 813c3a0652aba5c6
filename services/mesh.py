"""The mesh, discovered: every service package with a `declaration.py` is a service.

Derived from the declarations here: the durable consumers the topology creates, the
processes `vidmesh up` starts, the services' settings classes; from these, elsewhere, the
NATS users and their permissions (services/nats_auth.py) and the AsyncAPI document.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from shared.declaration import WATCH_ALL, ConsumerSpec, Declaration
from shared.settings import Settings

PACKAGE = "services"


@cache
def declarations() -> dict[str, Declaration]:
    """{service name: its declaration}, the front door (public HTTP) last, others by name.

    Raises RuntimeError when a declaration's name is not its folder's."""
    found = {}
    root = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(root)]), key=lambda i: i.name):
        if info.ispkg and (root / info.name / "declaration.py").exists():
            declaration = importlib.import_module(f"{PACKAGE}.{info.name}.declaration").DECLARATION
            if declaration.name != info.name:
                raise RuntimeError(f"services/{info.name}/declaration.py declares {declaration.name!r}")
            found[info.name] = declaration
    return dict(sorted(found.items(), key=lambda item: item[1].public_http))


def names() -> tuple[str, ...]:
    """Every service, in the order `vidmesh up` starts them."""
    return tuple(declarations())


@cache
def consumers() -> tuple[ConsumerSpec, ...]:
    """Every durable consumer of the mesh, each once (two services may share a durable name
    on different streams)."""
    unique = {(spec.stream, spec.durable): spec for d in declarations().values() for spec in d.consumes}
    return tuple(unique.values())


def watched(declaration: Declaration) -> tuple[ConsumerSpec, ...]:
    """The durable consumers whose lag a service reads: those of its `watches` streams."""
    if WATCH_ALL in declaration.watches:
        return consumers()
    return tuple(spec for spec in consumers() if spec.stream in declaration.watches)


def processes(settings) -> list[tuple[str, str]]:
    """(process name, service) for every process `vidmesh up` starts: `transcoder-1`,
    `transcoder-2` when the declaration's `processes_setting` asks for two."""
    found = []
    for name, declaration in declarations().items():
        count = getattr(settings, declaration.processes_setting) if declaration.processes_setting else 1
        found += [(name, name)] if count == 1 else [(f"{name}-{i}", name) for i in range(1, count + 1)]
    return found


def settings_classes() -> dict[str, type[Settings]]:
    """{service: the settings class it loads}: the most derived class of its
    services/<name>/settings.py, else the shared `Settings`."""
    found: dict[str, type[Settings]] = {}
    for name in declarations():
        kind: type[Settings] = Settings
        if (Path(__file__).parent / name / "settings.py").exists():
            module = importlib.import_module(f"{PACKAGE}.{name}.settings")
            own = [
                v
                for v in vars(module).values()
                if isinstance(v, type) and issubclass(v, Settings) and v.__module__ == module.__name__
            ]
            kind = next(v for v in own if not any(o is not v and issubclass(o, v) for o in own))
        found[name] = kind
    return found

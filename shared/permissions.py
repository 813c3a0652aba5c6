"""NATS identity of a process: its user and password, its inbox prefix, and the start-up
check that the topology it uses exists.

Each service is its own NATS user, with the permissions services/nats_auth.py derives from
its declaration, and its own inbox prefix (`_INBOX.<service>`), so a service can subscribe
to its own replies but not to anyone else's. Topology is created by the `admin` user only
(`vidmesh up`, `vidmesh init`); a service only checks it is there (`verify`).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from nats.js import JetStreamContext

from .declaration import Declaration
from .settings import Settings

ADMIN = "admin"  # vidmesh up / init (topology), the CLI (dlq, schedules), operators


def inbox_prefix(service: str) -> str:
    """The inbox prefix of a service's connection: replies reach only that service."""
    return f"_INBOX.{service}"


# --- the client side: passwords under the data dir (vidmesh up) ------------------------------

CREDENTIALS_FILE = "nats-users.json"


def write_owner_only(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def local_passwords(data_dir: Path, users: tuple[str, ...] = ()) -> dict[str, str]:
    """The embedded server's passwords (`<data dir>/nats-users.json`, mode 0600): with
    `users`, one random password for each that has none yet, kept so restarts keep them."""
    path = Path(data_dir) / CREDENTIALS_FILE
    current: dict[str, str] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
    if set(users) - set(current):
        current = {**{user: secrets.token_urlsafe(24) for user in users}, **current}
        write_owner_only(path, json.dumps(current, indent=2) + "\n")
    elif users:
        os.chmod(path, 0o600)
    return current


def credentials(settings: Settings, user: str) -> tuple[str | None, str | None]:
    """The NATS user and password to connect with: NATS_USER/NATS_PASSWORD when set, else
    `user`'s generated password from the data dir of a `vidmesh up` (so `vidmesh run X`
    and the CLI work against the embedded server without copying secrets around)."""
    if settings.nats_user:
        return settings.nats_user, settings.nats_password
    password = local_passwords(settings.data_dir).get(user)
    if password is None:
        return None, None
    return user, password


# --- start-up: services check the topology instead of creating it ----------------------------


class TopologyMissing(Exception):
    """What a service needs is not there yet: `vidmesh init` (or `vidmesh up`) creates it."""


async def verify(js: JetStreamContext, declaration: Declaration) -> None:
    """Check that the streams, buckets and consumers a service uses exist (a service may not
    create them). Raises TopologyMissing naming what is missing."""
    from nats.js.errors import NotFoundError

    missing = []
    for name in declaration.streams():
        try:
            await js.stream_info(name)
        except NotFoundError:
            missing.append(f"stream {name}")
    for spec in declaration.consumes:
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            missing.append(f"consumer {spec.stream}/{spec.durable}")
    if missing:
        raise TopologyMissing(f"missing {', '.join(missing)}: run `vidmesh init` (as the NATS admin user)")

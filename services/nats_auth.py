"""Who may do what on the bus: every service's NATS permissions, derived from its declaration.

`permissions(service)` turns a service's declaration (services/<name>/declaration.py) into
the subjects nats-server checks, JetStream API subjects included. Everything else is
refused by the server.

The same function feeds every deployment, so they cannot drift:
- `vidmesh up` writes the embedded server's `authorization` block
  (`nats_users_conf(passwords)`);
- `vidmesh nats-config --out ...` writes the committed compose/k8s file, with passwords
  taken from the NATS server's environment (`$VIDMESH_NATS_PASSWORD_<USER>`), and a test
  checks the committed files equal a fresh rendering.

Topology (streams, consumers, buckets) is created by the `admin` user only: `vidmesh up`
and `vidmesh init` (a compose one-shot, a k8s Job) run `provision.ensure`; services have no
`$JS.API.STREAM.CREATE/UPDATE/DELETE` or consumer-create rights on durables and only check
at start that what they use exists (`shared.permissions.verify`). A compromised worker can
thus neither delete a stream nor read another service's bucket.
"""

from __future__ import annotations

import json

from shared import topology as t
from shared.declaration import kv_stream
from shared.ops import LOG_LEVEL_SUBJECT
from shared.permissions import ADMIN, inbox_prefix

from . import mesh

API = "$JS.API"


def users() -> tuple[str, ...]:
    """Every NATS user: one per service, then `admin`."""
    return mesh.names() + (ADMIN,)


def permissions(service: str) -> dict:
    """nats-server permissions of one service: {"publish": {"allow": [...]}, "subscribe": {...},
    "allow_responses": ...}. `admin` may do anything. KeyError for an unknown service."""
    if service == ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    n = mesh.declarations()[service]
    pub: list[str] = n.publish_subjects()  # with its own log records and metric samples
    sub: list[str] = [inbox_prefix(service) + ".>"]

    sub += [LOG_LEVEL_SUBJECT]  # log level changes on demand
    # nats.micro discovery: $SRV.PING|INFO|STATS[.<name>[.<id>]]
    micro = f"vidmesh-{service}"
    sub += ["$SRV.*", f"$SRV.*.{micro}", f"$SRV.*.{micro}.*"]
    # its request-reply endpoints (answers go back through allow_responses)
    sub += list(n.serves)
    pub += list(n.calls)
    # the streams and buckets it uses: info (to bind and to verify at start)
    pub += [f"{API}.STREAM.INFO.{s}" for s in n.streams()]
    for spec in n.consumes:
        pub += [
            f"{API}.CONSUMER.INFO.{spec.stream}.{spec.durable}",
            f"{API}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
            f"$JS.ACK.{spec.stream}.{spec.durable}.>",
            t.dead_letter_subject(spec.stream, spec.durable),  # a poison message is recorded in the dead-letter stream
        ]
    for spec in mesh.watched(n):
        pub += [f"{API}.STREAM.INFO.{spec.stream}", f"{API}.CONSUMER.INFO.{spec.stream}.{spec.durable}"]
    for stream in n.reads_messages:
        pub += [f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]
    for stream in n.deletes_messages:
        pub.append(f"{API}.STREAM.MSG.DELETE.{stream}")
    for stream in n.purges:
        pub.append(f"{API}.STREAM.PURGE.{stream}")
    for stream in n.follows + tuple(kv_stream(b) for b in n.reads_kv + n.writes_kv):
        # ephemeral ordered consumers (SSE, KV watch): create, flow control, delete
        pub += [
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    for bucket in n.reads_kv + n.writes_kv:
        stream = kv_stream(bucket)
        pub += [f"{API}.DIRECT.GET.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}"]
    for bucket in n.writes_kv:
        pub.append(f"$KV.{bucket}.>")
    if n.media:
        pub += [f"{API}.DIRECT.GET.{t.MEDIA_STREAM}", f"{API}.STREAM.MSG.GET.{t.MEDIA_STREAM}"]
    if n.media == "write":
        pub += [f"$O.{t.OBJ_MEDIA}.>", f"{API}.STREAM.PURGE.{t.MEDIA_STREAM}"]
    return {
        "publish": {"allow": _unique(pub)},
        "subscribe": {"allow": _unique(sub)},
        # replies to the requests it serves (micro endpoints, ops.cmd.log_level): one each
        "allow_responses": True,
    }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def password_env(user: str) -> str:
    """The NATS server's environment variable holding `user`'s password (deploy configs)."""
    return f"VIDMESH_NATS_PASSWORD_{user.upper()}"


def nats_users_conf(passwords: dict[str, str] | None = None) -> str:
    """The `authorization { users: [...] }` block for nats-server.

    With `passwords`, they are written in (the embedded server's generated config, kept
    owner-only); without, each password is a reference to the server's environment
    (`$VIDMESH_NATS_PASSWORD_<USER>`), which compose and k8s fill from their secrets.
    """
    lines = [
        "# NATS users of vidmesh: one per service, least privilege, plus `admin` (topology, CLI).",
        "# GENERATED from the services' declarations by `vidmesh nats-config`: do not edit by hand",
        "# (tests/integration/test_permissions.py checks the committed copies).",
        "authorization {",
        "  users: [",
    ]
    for user in users():
        if passwords is None:
            password = f"${password_env(user)}"
        else:
            password = json.dumps(passwords[user])
        perms = permissions(user)
        lines += ["    {", f"      user: {json.dumps(user)}", f"      password: {password}", "      permissions: {"]
        for side in ("publish", "subscribe"):
            allow = perms[side]["allow"]
            lines.append(f"        {side}: {{ allow: [")
            lines += [f"          {json.dumps(subject)}" for subject in allow]
            lines.append("        ] }")
        if perms.get("allow_responses"):
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)

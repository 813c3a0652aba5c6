"""Who may do what on the bus: every service's NATS permissions, derived from the topology.

One table (`NEEDS`) says what each service does with the bus, in the topology's own terms:
the subjects it publishes, the durable consumers it pulls from, the request-reply
endpoints it serves and calls, the buckets it reads or writes, the streams it reads
single messages from. `permissions(service)` turns that into the subjects nats-server
checks, JetStream API subjects included. Everything else is refused by the server.

The same function feeds every deployment, so they cannot drift:
- `vidmesh up` writes the embedded server's `authorization` block with generated
  passwords (`nats_users_conf(passwords)`);
- `vidmesh nats-config --out ...` writes the committed compose/k8s file, with passwords
  taken from the NATS server's environment (`$VIDMESH_NATS_PASSWORD_<USER>`), and a unit
  test checks the committed files equal a fresh rendering.

Topology (streams, consumers, buckets) is created by the `admin` user only: `vidmesh up`
and `vidmesh init` (a compose one-shot, a k8s Job) run `topology.ensure`; services have no
`$JS.API.STREAM.CREATE/UPDATE/DELETE` or consumer-create rights on durables and only check
at start that what they use exists (`verify`). A compromised worker can thus neither
delete a stream nor read another service's bucket.

Each service also gets its own inbox prefix (`_INBOX.<service>`, set in bus.py), so a
service can subscribe to its own replies but not to anyone else's.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import topology as t
from .contracts import (
    AudioEncoded,
    ChunkEncoded,
    ChunkProgress,
    DeliverWebhook,
    EncodeAudio,
    EncodeChunk,
    ExtractThumbnail,
    RenditionStitched,
    StitchRenditions,
    TaskFailed,
    ThumbnailExtracted,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoPlayable,
    VideoReady,
    VideoUploaded,
)
from .ops import LOG_LEVEL_SUBJECT

ADMIN = "admin"  # vidmesh up / init (topology), the CLI (dlq, schedules), operators
API = "$JS.API"


def _all(kind) -> str:
    """Every subject of one message type (any tenant, any video)."""
    return t.SUBJECTS[kind] + ".>"


def _dlq(spec: t.ConsumerSpec) -> str:
    return f"{t.DEADLETTER_SUBJECT}.{spec.stream}.{spec.durable}"


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


MEDIA_STREAM = f"OBJ_{t.OBJ_MEDIA}"


@dataclass(frozen=True)
class Needs:
    """What one service does with the bus (subjects may use wildcards)."""

    publishes: tuple[str, ...] = ()  # events, tasks, dead letters (JetStream or core)
    consumes: tuple[t.ConsumerSpec, ...] = ()  # durable pull consumers it pulls from
    serves: tuple[str, ...] = ()  # request-reply endpoints it answers
    calls: tuple[str, ...] = ()  # request-reply endpoints it asks
    reads_kv: tuple[str, ...] = ()
    writes_kv: tuple[str, ...] = ()  # read and write
    media: str = ""  # "" | "read" | "write" (the object store)
    reads_messages: tuple[str, ...] = ()  # streams it gets single messages from (seq/subject)
    deletes_messages: tuple[str, ...] = ()  # streams it deletes single messages from
    purges: tuple[str, ...] = ()  # streams it purges (by subject)
    follows: tuple[str, ...] = ()  # streams it tails with ephemeral ordered consumers
    watches: tuple[t.ConsumerSpec, ...] = ()  # consumers whose info (lag) it reads
    inspects: tuple[str, ...] = ()  # further streams whose info it reads

    def streams(self) -> list[str]:
        """Every stream this service touches, i.e. what it checks at start."""
        names = {spec.stream for spec in self.consumes + self.watches}
        names |= {_kv(b) for b in self.reads_kv + self.writes_kv}
        names |= set(self.reads_messages + self.deletes_messages + self.purges + self.follows + self.inspects)
        if self.media:
            names.add(MEDIA_STREAM)
        return sorted(names)


_ALL_TASK_CONSUMERS = (t.TRANSCODE_TASKS, t.THUMBNAIL_TASKS)
_TRANSCODE_TASKS = tuple(_all(kind) for kind in (EncodeChunk, EncodeAudio, StitchRenditions))

NEEDS: dict[str, Needs] = {
    "gateway": Needs(
        publishes=(_all(VideoUploaded),),
        calls=(
            t.RPC_CATALOG_GET,
            t.RPC_CATALOG_LIST,
            t.RPC_CATALOG_DELETE,
            t.RPC_CATALOG_USAGE,
            t.RPC_CATALOG_PLAYLIST,
            t.RPC_PIPELINE_PROBE,
            t.RPC_MONITOR_ALERTS,
            t.RPC_WEBHOOK_CREATE,
            t.RPC_WEBHOOK_LIST,
            t.RPC_WEBHOOK_GET,
            t.RPC_WEBHOOK_DELETE,
            t.RPC_WEBHOOK_DELIVERIES,
            t.RPC_GATEWAY_RELEASE_UPLOAD + ".>",  # another replica's lock on a resumable upload
        ),
        serves=(t.RPC_GATEWAY_RELEASE_UPLOAD + ".>",),
        writes_kv=(t.KV_UPLOADS, t.KV_ADMISSIONS, t.KV_RESUMABLE),
        reads_kv=(t.KV_MONITOR,),
        media="write",  # uploads in, media out
        deletes_messages=(MEDIA_STREAM,),  # a resumable upload's chunks its state never recorded
        follows=(t.EVENTS,),  # SSE: one video's events
        watches=(t.TRANSCODE_TASKS,),  # backpressure when the monitor is silent
    ),
    "catalog": Needs(
        publishes=(_all(VideoDeleted),),
        consumes=(t.CATALOG_EVENTS,),
        serves=(t.RPC_CATALOG_GET, t.RPC_CATALOG_LIST, t.RPC_CATALOG_DELETE, t.RPC_CATALOG_USAGE, t.RPC_CATALOG_PLAYLIST),
        writes_kv=(t.KV_VIDEOS,),
        media="write",  # deletes a deleted video's media
        reads_messages=(t.EVENTS,),  # read-your-writes: the upload event before the projection
    ),
    "pipeline": Needs(
        publishes=(
            _all(VideoPlanned),
            _all(VideoPlayable),
            _all(VideoReady),
            _all(VideoFailed),
            *_TRANSCODE_TASKS,
            _all(ExtractThumbnail),
            _all(TaskFailed),
            *(_dlq(spec) for spec in _ALL_TASK_CONSUMERS),  # tasks whose worker died every time
        ),
        consumes=(t.PIPELINE_EVENTS, t.EXHAUSTED_TASKS),
        serves=(t.RPC_PIPELINE_PROBE,),
        writes_kv=(t.KV_JOBS,),
        media="write",  # reads uploads to probe; deletes outputs of deleted videos
        reads_messages=(t.TASKS_TRANSCODE, t.TASKS_THUMBNAIL),
        deletes_messages=(t.TASKS_TRANSCODE, t.TASKS_THUMBNAIL),
    ),
    "transcoder": Needs(
        publishes=(
            _all(ChunkProgress),
            _all(ChunkEncoded),
            _all(AudioEncoded),
            _all(RenditionStitched),
            _all(TaskFailed),
        ),
        consumes=(t.TRANSCODE_TASKS,),
        media="write",
        reads_messages=(t.EVENTS,),  # was the video deleted? (Direct Get)
    ),
    "thumbnailer": Needs(
        publishes=(_all(ThumbnailExtracted), _all(TaskFailed)),
        consumes=(t.THUMBNAIL_TASKS,),
        media="write",
        reads_messages=(t.EVENTS,),
    ),
    "notifier": Needs(
        publishes=(_all(DeliverWebhook),),
        consumes=(t.NOTIFIER_EVENTS, t.WEBHOOK_DELIVERIES),
        serves=(
            t.RPC_WEBHOOK_CREATE,
            t.RPC_WEBHOOK_LIST,
            t.RPC_WEBHOOK_GET,
            t.RPC_WEBHOOK_DELETE,
            t.RPC_WEBHOOK_DELIVERIES,
        ),
        calls=(t.RPC_CATALOG_GET,),
        writes_kv=(t.KV_WEBHOOKS, t.KV_DELIVERIES),
    ),
    "scheduler": Needs(
        publishes=(
            t.SCHEDULE_PREFIX + ".>",  # declares the schedules
            t.USAGE_REPORTED_PREFIX + ".>",
            *_TRANSCODE_TASKS,  # re-drive
            _all(ExtractThumbnail),
            _all(TaskFailed),  # a stuck video fails like a worker that gave up
        ),
        consumes=(t.SCHEDULER_TICKS,),
        calls=(t.RPC_CATALOG_GET, t.RPC_CATALOG_LIST, t.RPC_CATALOG_DELETE),
        writes_kv=(t.KV_SCHEDULER, t.KV_RESUMABLE),  # upload_expiry removes expired uploads
        reads_kv=(t.KV_JOBS, t.KV_VIDEOS),
        reads_messages=(t.SCHEDULES, t.TASKS_TRANSCODE, t.TASKS_THUMBNAIL),
        # a schedule set to `off`; an expired upload's chunks, and its key once deleted
        purges=(t.SCHEDULES, MEDIA_STREAM, _kv(t.KV_RESUMABLE)),
    ),
    "monitor": Needs(
        publishes=(t.ALERT_PREFIX + ".>",),
        consumes=(t.MONITOR_INPUT,),
        serves=(t.RPC_MONITOR_ALERTS,),
        writes_kv=(t.KV_MONITOR,),
        watches=tuple({(s.stream, s.durable): s for s in t.CONSUMERS}.values()),
        inspects=(t.DEADLETTER,),
    ),
}

SERVICES = tuple(NEEDS)
USERS = SERVICES + (ADMIN,)


def inbox_prefix(service: str) -> str:
    """The inbox prefix of a service's connection: replies reach only that service."""
    return f"_INBOX.{service}"


def permissions(service: str) -> dict:
    """nats-server permissions of one service: {"publish": {"allow": [...]}, "subscribe": {...},
    "allow_responses": ...}. `admin` may do anything."""
    if service == ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    n = NEEDS[service]
    pub: list[str] = list(n.publishes)
    sub: list[str] = [inbox_prefix(service) + ".>"]

    # ops: its own log records and metric samples; log level changes on demand
    pub += [f"{t.LOG_PREFIX}.{service}", f"{t.METRICS_PREFIX}.{service}"]
    sub += [LOG_LEVEL_SUBJECT]
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
            _dlq(spec),  # a poison message is recorded in the dead-letter stream
        ]
    for spec in n.watches:
        pub.append(f"{API}.CONSUMER.INFO.{spec.stream}.{spec.durable}")
    for stream in n.reads_messages:
        pub += [f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]
    for stream in n.deletes_messages:
        pub.append(f"{API}.STREAM.MSG.DELETE.{stream}")
    for stream in n.purges:
        pub.append(f"{API}.STREAM.PURGE.{stream}")
    for stream in n.follows + tuple(_kv(b) for b in n.reads_kv + n.writes_kv):
        # ephemeral ordered consumers (SSE, KV watch): create, flow control, delete
        pub += [
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    for bucket in n.reads_kv + n.writes_kv:
        stream = _kv(bucket)
        pub += [f"{API}.DIRECT.GET.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}"]
    for bucket in n.writes_kv:
        pub.append(f"$KV.{bucket}.>")
    if n.media:
        pub += [f"{API}.DIRECT.GET.{MEDIA_STREAM}", f"{API}.STREAM.MSG.GET.{MEDIA_STREAM}"]
    if n.media == "write":
        pub += [f"$O.{t.OBJ_MEDIA}.>", f"{API}.STREAM.PURGE.{MEDIA_STREAM}"]
    return {
        "publish": {"allow": _unique(pub)},
        "subscribe": {"allow": _unique(sub)},
        # replies to the requests it serves (micro endpoints, ops.cmd.log_level): one each
        "allow_responses": True,
    }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- the server side: the `authorization` block ---------------------------------------------


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
        "# GENERATED from shared/permissions.py by `vidmesh nats-config`: do not edit by hand",
        "# (tests/integration/test_permissions.py checks the committed copies).",
        "authorization {",
        "  users: [",
    ]
    for user in USERS:
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


# --- the client side: passwords under the data dir (vidmesh up) ------------------------------

CREDENTIALS_FILE = "nats-users.json"


def write_owner_only(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def local_passwords(data_dir: Path, create: bool = False) -> dict[str, str]:
    """The embedded server's passwords (`<data dir>/nats-users.json`, mode 0600): one random
    password per user, generated on first use and kept, so restarts keep them."""
    path = Path(data_dir) / CREDENTIALS_FILE
    current: dict[str, str] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
    if create and set(USERS) - set(current):
        current = {**{user: secrets.token_urlsafe(24) for user in USERS}, **current}
        write_owner_only(path, json.dumps(current, indent=2) + "\n")
    elif create:
        os.chmod(path, 0o600)
    return current


def credentials(settings, user: str) -> tuple[str | None, str | None]:
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


async def verify(js, service: str) -> None:
    """Check that the streams, buckets and consumers `service` uses exist (a service may not
    create them: see the module doc). Raises TopologyMissing naming what is missing."""
    from nats.js.errors import NotFoundError

    needs = NEEDS.get(service)
    streams = needs.streams() if needs else [c.name for c in t.streams(1, 1.0)]
    consumers = needs.consumes if needs else t.CONSUMERS
    missing = []
    for name in streams:
        try:
            await js.stream_info(name)
        except NotFoundError:
            missing.append(f"stream {name}")
    for spec in consumers:
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            missing.append(f"consumer {spec.stream}/{spec.durable}")
    if missing:
        raise TopologyMissing(f"missing {', '.join(missing)}: run `vidmesh init` (as the NATS admin user)")


"""The bus as an AsyncAPI 3.0 document, derived from what the mesh already says about it.

Sources: every service's declaration (services/<name>/declaration.py: publishes, consumes,
serves, calls, follows), the subjects and streams of shared/topology.py, the msgspec
contracts of shared/contracts.py (their JSON Schema), and the request and reply type of
each request-reply subject (`topology.RPC_TYPES`). Only the payloads of the few subjects
that are a prefix rather than a message type are written here (`PREFIXES`); a declared subject
this module cannot place raises `Unplaced`, so a new one cannot go undocumented.

`document(settings)` -> {"asyncapi": "3.0.0", "info", "servers", "channels", "operations",
"components": {"messages", "schemas", "securitySchemes"}}:
- one channel per subject family: a message type's prefix with `{tenant}.{video_id}`, a
  prefix with its own parameters (`logs.evt.{service}`, the schedule ticks each stream
  subject of SCHEDULES names), or a request-reply subject (its replies on a channel
  `<subject>.reply` without an address: the requester's inbox); each with
  `x-jetstream-stream` (the stream capturing it: retention, max age, replicas, duplicate
  window...) when a stream captures it;
- operations `<service>.send.<channel>` (it publishes there, requests with `reply`, or
  dead-letters what its consumers give up on) and `<service>.receive.<channel>` (a consumer's
  share of the channel, with `x-jetstream-consumer`: durable, filters, ack policy, ack wait,
  max deliver...; an ephemeral one for `follows`; or an endpoint it serves, with `reply` and
  the NATS queue-group binding); `x-subjects` is what the declaration names, which may be
  narrower than the channel.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec
from nats.micro.service import DEFAULT_QUEUE_GROUP

from shared import contracts, topology
from shared.declaration import ConsumerSpec, Declaration
from shared.settings import Settings

from . import mesh, provision

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/{name}"
NATS_BINDING_VERSION = "0.1.0"


class Unplaced(RuntimeError):
    """A declared subject that no channel of the document covers."""


# --- messages ---------------------------------------------------------------------------------

TRACE_HEADERS = {
    "traceparent": {"type": "string", "description": "W3C trace context of the span that sent it"},
    "tracestate": {"type": "string"},
}
BUS_HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "stable per logical message: JetStream drops a retried publish within the "
            "stream's duplicate window",
        },
        **TRACE_HEADERS,
    },
}


@dataclass(frozen=True)
class Message:
    """One kind of message: `payload` is a msgspec Struct (its JSON Schema goes into
    components.schemas) or an inline JSON Schema."""

    key: str  # its name in components.messages
    payload: type | dict
    summary: str = ""
    headers: dict = field(default_factory=lambda: BUS_HEADERS)
    content_type: str = "application/json"


def message(kind: type, summary: str = "") -> Message:
    """The message of a msgspec Struct: its class name, its docstring's first line."""
    doc = inspect.cleandoc(kind.__dict__.get("__doc__") or "")  # its own, not its base class's
    return Message(kind.__name__, kind, summary or " ".join(doc.split("\n\n")[0].split()))


SERVICE_ERROR = Message(
    "ServiceError",
    {"type": "string", "maxLength": 0, "description": "empty: the error is in the headers"},
    "The endpoint refused or failed the request (nats.micro error reply)",
    {
        "type": "object",
        "properties": {
            "Nats-Service-Error-Code": {
                "type": "string",
                "description": "e.g. bad_request (an undecodable request), not_found, invalid_request",
            },
            "Nats-Service-Error": {"type": "string", "description": "what went wrong, for a person"},
        },
        "required": ["Nats-Service-Error-Code", "Nats-Service-Error"],
    },
    "text/plain",
)
DEAD_LETTER = Message(
    "DeadLetter",
    {"description": "the dead message's bytes, unchanged (any message of the consumer's stream)"},
    "A message a consumer will not process (poison, or out of deliveries), kept for `vidmesh dlq`",
    {
        "type": "object",
        "properties": {
            **{
                f"Vidmesh-Dead-{name}": {"type": "string", "description": why}
                for name, why in (
                    ("Reason", "why it is dead"),
                    ("Subject", "the subject it was published on"),
                    ("Stream", "the stream it came from"),
                    ("Consumer", "the durable consumer that gave up on it"),
                    ("Stream-Seq", "its sequence in that stream"),
                    ("Deliveries", "how many times it was delivered"),
                )
            },
            "Nats-Msg-Id": {"type": "string", "description": "dead:<stream>:<consumer>:<seq>: dead-lettered once"},
            **TRACE_HEADERS,
        },
        "required": ["Vidmesh-Dead-Reason", "Vidmesh-Dead-Stream", "Vidmesh-Dead-Consumer"],
    },
    "application/octet-stream",
)
SCHEDULE_DEFINITION = Message(
    "ScheduleDefinition",
    contracts.ScheduleTick,
    "A standing server-side schedule: the server copies the body into a tick at every firing",
    {
        "type": "object",
        "properties": {
            "Nats-Schedule": {"type": "string", "description": "`@every 1m`, a 6-field cron (UTC) or `@daily`"},
            "Nats-Schedule-Target": {
                "type": "string",
                "description": "<owner>.cmd.tick.<name> (the scheduler's, or the pipeline's for redrive): where ticks go",
            },
            "Nats-Schedule-TTL": {"type": "string", "description": "a tick nobody handled in time expires"},
        },
        "required": ["Nats-Schedule", "Nats-Schedule-Target"],
    },
)
RELEASE_KEY = Message(
    "ReleaseUpload",
    {"type": "string", "description": "the resumable upload's key in the resumable_uploads bucket"},
    "Another gateway asks this one to let go of its lock on a resumable upload",
    {"type": "object", "properties": TRACE_HEADERS},
    "text/plain",
)
RELEASED = Message(
    "UploadReleased",
    {"type": "string", "const": "released"},
    "It let go (or held nothing); no answer means it still holds the lock, no responders that it is gone",
    {"type": "object", "properties": {}},
    "text/plain",
)


# --- channels ---------------------------------------------------------------------------------

PARAMETERS = {
    "tenant": "the tenant the message belongs to",
    "video_id": "the video it is about",
    "service": "the service that sent it",
    "rule": "the alert rule's name (services/monitor/rules.py)",
    "schedule": "the schedule's name",
    "day": "YYYY-MM-DD, UTC",
    "stream": "the stream of the consumer",
    "consumer": "the durable consumer's name",
    "instance": "the gateway process holding the lock",
}


@dataclass(frozen=True)
class Family:
    """The subjects of one channel: a prefix, then one token per parameter. An endpoint's
    family has `reply` messages (its reply channel has no fixed address: the requester's inbox)."""

    prefix: str
    params: tuple[str, ...]
    messages: tuple[Message, ...]
    description: str
    reply: tuple[Message, ...] = ()

    @property
    def id(self) -> str:
        return self.prefix.lstrip("$")

    @property
    def pattern(self) -> str:
        """As a NATS subject pattern."""
        return ".".join((self.prefix, *(("*",) * len(self.params))))

    @property
    def address(self) -> str:
        return ".".join((self.prefix, *(f"{{{p}}}" for p in self.params)))


# The subjects that are a prefix rather than a message type's subject: what travels on each.
PREFIXES = (
    Family(
        topology.LOG_PREFIX,
        ("service",),
        (message(contracts.LogRecord, "A log record of a service"),),
        "Log records (warning and above) of every service",
    ),
    Family(
        topology.METRICS_PREFIX,
        ("service",),
        (message(contracts.MetricSample),),
        "Periodic metric samples of every service",
    ),
    Family(
        topology.ALERT_PREFIX,
        ("rule",),
        (message(contracts.AlertChanged, "An alert fired or resolved"),),
        "Alert changes announced by the monitor",
    ),
    Family(
        topology.SCHEDULE_PREFIX,
        ("schedule",),
        (SCHEDULE_DEFINITION,),
        "Server-side schedule definitions (the server fires them; never consumed)",
    ),
    Family(
        topology.USAGE_REPORTED_PREFIX,
        ("tenant", "day"),
        (message(contracts.UsageReported),),
        "Daily usage reports, one per tenant and day",
    ),
    Family(
        topology.DEADLETTER_SUBJECT,
        ("stream", "consumer"),
        (DEAD_LETTER,),
        "Dead letters: messages a consumer will not process, per stream and consumer",
    ),
    Family(
        topology.MAX_DELIVERIES_ADVISORY,
        ("stream", "consumer"),
        (message(contracts.MaxDeliveriesAdvisory),),
        "Published by nats-server when a message ran out of deliveries on a media work queue",
    ),
    Family(
        topology.RPC_GATEWAY_RELEASE_UPLOAD,
        ("instance",),
        (RELEASE_KEY,),
        "Request-reply: the gateway holding a resumable upload's lock hands it over",
        reply=(RELEASED,),
    ),
)
KINDS = {"evt": "Event", "cmd": "Task (work queue)"}


def type_families() -> list[Family]:
    """One family per message type of topology.SUBJECTS: `<prefix>.{tenant}.{video_id}`."""
    found = []
    for kind, prefix in topology.SUBJECTS.items():
        what = KINDS.get(prefix.split(".")[1], "Message")
        found.append(Family(prefix, ("tenant", "video_id"), (message(kind),), f"{what} {kind.__name__} of one video"))
    return found


def tick_families(streams: list) -> list[Family]:
    """Schedule ticks: every subject of the SCHEDULES stream but the definitions'. Each owner
    of scheduled jobs has its own tick prefix (`<owner>.cmd.tick`), its consumer its own filter."""
    schedules = next(cfg for cfg in streams if cfg.name == topology.SCHEDULES)
    prefixes = [s.removesuffix(".>") for s in schedules.subjects if s != topology.SCHEDULE_PREFIX + ".>"]
    return [
        Family(
            p,
            ("schedule",),
            (message(contracts.ScheduleTick),),
            f"Ticks the server writes when a schedule of {p.split('.')[0]}'s jobs fires",
        )
        for p in prefixes
    ]


def endpoints() -> dict[str, tuple[type, type]]:
    """{subject: (request type, reply type)} of every request-reply endpoint a service serves."""
    served = {subject for d in mesh.declarations().values() for subject in d.serves}
    return {subject: kinds for subject, kinds in topology.RPC_TYPES.items() if subject in served}


def families(streams: list) -> list[Family]:
    """Every channel's family: message types, prefixes, schedule ticks, request-reply endpoints."""
    found = type_families() + list(PREFIXES) + tick_families(streams)
    served = endpoints()
    placed = {f.pattern for f in found}
    for declaration in mesh.declarations().values():
        for subject in declaration.serves + declaration.calls:
            if subject in served and subject not in placed:
                request, reply = served[subject]
                asked = message(request)
                found.append(
                    Family(
                        subject,
                        (),
                        (asked,),
                        f"Request-reply: {asked.summary or request.__name__}",
                        reply=(message(reply), SERVICE_ERROR),
                    )
                )
                placed.add(subject)
    return found


# --- subjects ---------------------------------------------------------------------------------


def overlaps(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (`*` one token, a final `>` the rest)."""
    x, y = a.split("."), b.split(".")
    for i in range(max(len(x), len(y))):
        if i >= len(x) or i >= len(y):
            return False
        if x[i] == ">" or y[i] == ">":
            return True
        if x[i] != y[i] and "*" not in (x[i], y[i]):
            return False
    return True


def family_of(subject: str, found: list[Family], who: str) -> Family:
    """The one family a declared subject belongs to."""
    hits = [f for f in found if overlaps(subject, f.pattern)]
    if len(hits) != 1:
        where = ", ".join(f.address for f in hits) or "no channel"
        raise Unplaced(f"{who}: {subject} falls in {where}; name its payload in services/asyncapi.py PREFIXES")
    return hits[0]


def stream_of(family: Family, streams: list) -> msgspec.Struct | None:
    """The stream capturing a family's subjects (None for request-reply)."""
    hits = [cfg for cfg in streams if any(overlaps(s, family.pattern) for s in cfg.subjects)]
    if len(hits) > 1:
        raise Unplaced(f"{family.address} is captured by {', '.join(c.name for c in hits)}")
    return hits[0] if hits else None


def stream_facts(cfg) -> dict:
    """x-jetstream-stream: the stream's configuration (durations in seconds; max_age_s 0: kept
    until other limits or acknowledgement remove them)."""
    facts = {
        "name": cfg.name,
        "subjects": list(cfg.subjects),
        "retention": cfg.retention.value,
        "storage": cfg.storage.value,
        "replicas": cfg.num_replicas,
        "max_age_s": cfg.max_age or 0,
        "duplicate_window_s": cfg.duplicate_window or 120.0,  # the server's default when unset
    }
    for name in ("max_bytes", "max_msgs_per_subject", "allow_direct", "allow_msg_schedules", "allow_msg_ttl"):
        value = getattr(cfg, name, None)
        if value not in (None, False, -1):
            facts[name] = value
    return facts


def consumer_facts(spec: ConsumerSpec, settings: Settings) -> dict:
    """x-jetstream-consumer: the durable consumer as `provision.ensure` creates it."""
    cfg = provision.consumer_config(spec, settings)
    facts = {
        "stream": spec.stream,
        "durable": cfg.durable_name,
        "filters": list(spec.filters),
        "pull": True,
        "ack_policy": cfg.ack_policy.value,
        "deliver_policy": cfg.deliver_policy.value,
        "ack_wait_s": cfg.ack_wait,
        "max_deliver": cfg.max_deliver,
        "max_ack_pending": cfg.max_ack_pending,
        "dead_letter_subject": topology.dead_letter_subject(spec.stream, spec.durable),
    }
    return facts


# --- the document -----------------------------------------------------------------------------


class _Builder:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.streams = provision.streams(settings.replicas, settings.events_max_age_s)
        self.families = families(self.streams)
        self.channels: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.messages: dict[str, Message] = {}

    def channel(self, family: Family) -> str:
        if family.id not in self.channels:
            self.channels[family.id] = self._channel(family)
            if family.reply:
                self.channels[family.id + ".reply"] = {
                    "address": None,  # the requester's inbox
                    "description": f"Replies to {family.prefix}, on the requester's inbox",
                    "messages": self._messages(family.reply),
                }
        return family.id

    def _channel(self, family: Family) -> dict:
        found = {"address": family.address, "description": family.description}
        found["messages"] = self._messages(family.messages)
        if family.params:
            found["parameters"] = {p: self._parameter(p) for p in family.params}
        stream = stream_of(family, self.streams)
        if stream is not None:
            found["x-jetstream-stream"] = stream_facts(stream)
        return found

    def _parameter(self, name: str) -> dict:
        found = {"description": PARAMETERS[name]}
        if name == "service":
            found["enum"] = list(mesh.names())
        return found

    def _messages(self, messages: tuple[Message, ...]) -> dict:
        for m in messages:
            if self.messages.setdefault(m.key, m) != m:
                raise Unplaced(f"two messages are named {m.key}")
        return {m.key: {"$ref": f"#/components/messages/{m.key}"} for m in messages}

    def operation(self, key: str, service: str, action: str, family: Family, subjects: list[str], **extra) -> None:
        cid = self.channel(family)
        if key in self.operations:  # the same service and channel again: one more subject
            self.operations[key]["x-subjects"] += [s for s in subjects if s not in self.operations[key]["x-subjects"]]
            return
        op = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{m.key}"} for m in family.messages],
            "tags": [{"name": service}],
            "x-subjects": list(subjects),
        }
        if family.reply:
            rid = cid + ".reply"
            op["reply"] = {
                "channel": {"$ref": f"#/channels/{rid}"},
                "messages": [{"$ref": f"#/channels/{rid}/messages/{m.key}"} for m in family.reply],
            }
        op.update(extra)
        self.operations[key] = op

    def service(self, name: str, declaration: Declaration) -> None:
        who = f"services/{name}/declaration.py"
        # The subjects a service publishes, calls and serves: the action, what the summary
        # says the service does with the family, and whether it answers in a queue group.
        roles = (
            (declaration.publish_subjects(), "send", "publishes {}", False),
            (declaration.calls, "send", "requests {} and waits for the reply", False),
            (declaration.serves, "receive", "answers {}", True),
        )
        for subjects, action, does, queued in roles:
            for subject in subjects:
                family = family_of(subject, self.families, who)
                extra: dict = {"summary": f"{name} " + does.format(family.prefix)}
                if queued:
                    extra["bindings"] = {"nats": {"queue": DEFAULT_QUEUE_GROUP, "bindingVersion": NATS_BINDING_VERSION}}
                self.operation(f"{name}.{action}.{family.id}", name, action, family, [subject], **extra)
        for spec in declaration.consumes:
            self.consumer(name, spec, who)
        for stream in declaration.follows:
            self.follower(name, stream)

    def consumer(self, name: str, spec: ConsumerSpec, who: str) -> None:
        facts = consumer_facts(spec, self.settings)
        hit = False
        for family in self.in_stream(spec.stream):
            subjects = [f for f in spec.filters if overlaps(f, family.pattern)]
            if subjects:
                hit = True
                self.operation(
                    f"{name}.receive.{family.id}",
                    name,
                    "receive",
                    family,
                    subjects,
                    summary=f"{name} pulls {family.prefix} through the durable consumer {spec.durable} "
                    f"on {spec.stream}",
                    **{"x-jetstream-consumer": facts},
                )
        if not hit:
            raise Unplaced(f"{who}: the consumer {spec.stream}/{spec.durable} filters no channel of {spec.stream}")
        # a poison message, or one out of deliveries, goes to the dead-letter stream
        dlq = facts["dead_letter_subject"]
        family = family_of(dlq, self.families, who)
        self.operation(
            f"{name}.send.{family.id}",
            name,
            "send",
            family,
            [dlq],
            summary=f"{name} dead-letters what its consumers will not process",
        )

    def follower(self, name: str, stream: str) -> None:
        """Ephemeral ordered consumers (the gateway's SSE): one video's history, then live."""
        filter_ = topology.video_events_filter("{tenant}", "{video_id}")
        facts = {
            "stream": stream,
            "ephemeral": True,
            "ordered": True,
            "filters": [filter_],
            "ack_policy": "none",
            "deliver_policy": "all",
        }
        for family in self.in_stream(stream):
            self.operation(
                f"{name}.receive.{family.id}",
                name,
                "receive",
                family,
                [filter_],
                summary=f"{name} tails one video's messages on {stream}",
                **{"x-jetstream-consumer": facts},
            )

    def in_stream(self, stream: str) -> list[Family]:
        return [f for f in self.families if getattr(stream_of(f, self.streams), "name", None) == stream]

    def components(self) -> dict:
        kinds = [m.payload for m in self.messages.values() if isinstance(m.payload, type)]
        _, schemas = msgspec.json.schema_components(kinds, ref_template=SCHEMAS)
        messages = {}
        for key, m in sorted(self.messages.items()):
            canonical = isinstance(m.payload, type) and m.payload.__name__ == key
            found = {"name": (_tag(m.payload) if canonical else None) or key, "title": key}
            if m.summary:
                found["summary"] = m.summary
            found["contentType"] = m.content_type
            found["headers"] = m.headers
            is_struct = isinstance(m.payload, type)
            found["payload"] = {"$ref": SCHEMAS.format(name=m.payload.__name__)} if is_struct else m.payload
            messages[key] = found
        return {
            "messages": messages,
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "natsUser": {
                    "type": "userPassword",
                    "description": "One NATS user per service, allowed exactly the subjects its declaration "
                    "names (`vidmesh nats-config`)",
                }
            },
        }


def _tag(kind: type) -> str | None:
    """A contract's wire tag (its `type` field), e.g. transcoder.encode_chunk.v1."""
    tag = kind.__struct_config__.tag
    return tag if isinstance(tag, str) else None


def server(settings: Settings) -> dict:
    """The NATS server the services connect to: the first of NATS_URL without credentials, or
    the embedded one `vidmesh up` starts."""
    host = f"127.0.0.1:{settings.nats_port}"  # where `vidmesh up` runs it
    if settings.nats_url:
        url = urlsplit(settings.nats_url.split(",")[0].strip())
        if url.hostname:
            host = f"{url.hostname}:{url.port or 4222}"
    return {
        "host": host,
        "protocol": "nats",
        "description": "NATS with JetStream",
        "security": [{"$ref": "#/components/securitySchemes/natsUser"}],
    }


def document(settings: Settings | None = None) -> dict:
    """The AsyncAPI 3.0.0 document of the bus, for these settings (they set stream replicas,
    the events' max age, the media tasks' ack wait and max deliver, the server's address);
    default: the environment's (`Settings.load()`). Raises Unplaced when a declared subject
    has no channel."""
    settings = settings or Settings.load()
    build = _Builder(settings)
    declarations = mesh.declarations()
    for name, declaration in declarations.items():
        build.service(name, declaration)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "vidmesh bus",
            "version": _version(),
            "description": "Every subject, stream and consumer of the vidmesh mesh over NATS JetStream, generated "
            "from the services' declarations (`vidmesh asyncapi`). Subjects read "
            "`<owner>.<kind>.<name>[.<tenant>.<video_id>]` (kind `evt` facts, `cmd` tasks, `rpc` "
            "request-reply). `x-jetstream-stream` is the stream capturing a channel, "
            "`x-jetstream-consumer` the consumer an operation pulls through (durations in seconds; a "
            "`max_age_s` of 0: no age limit).",
            "license": {"name": "Apache-2.0"},
            "tags": [{"name": n, "description": d.description} for n, d in declarations.items()],
        },
        "defaultContentType": "application/json",
        "servers": {"nats": server(settings)},
        "channels": dict(sorted(build.channels.items())),
        "operations": dict(sorted(build.operations.items())),
        "components": build.components(),
    }


def render(settings: Settings | None = None) -> str:
    """`document(settings)` as indented JSON: what `vidmesh asyncapi` prints and the gateway
    serves at /asyncapi.json."""
    return json.dumps(document(settings), indent=2) + "\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidmesh")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "0.0.0"

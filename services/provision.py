"""Creating the topology: every stream's and bucket's configuration and the durable consumers
of the services' declarations, made or updated by the NATS admin user only (`vidmesh up`,
`vidmesh init`). The services never create any of it: they check at start that what they
use is there (`shared.permissions.verify`).
"""

from __future__ import annotations

from nats.js import api
from nats.js.errors import BadRequestError, BucketNotFoundError

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec

UPLOADS_TTL_S = 24 * 3600.0  # idempotency keys and quota admissions
REPORTS_MAX_AGE_S = 400 * 86400.0  # usage reports are kept for billing
OPS_MAX_AGE_S = 24 * 3600.0  # logs, metrics and alerts

# The transcoder's work queue carries its three kinds of task: chunks, the audio, the stitch.
TRANSCODE_TASK_SUBJECTS = [t.SUBJECTS[kind] + ".>" for kind in (c.EncodeChunk, c.EncodeAudio, c.StitchRenditions)]


def work_queue(name: str, subjects: str | list[str], replicas: int) -> api.StreamConfig:
    """A task stream: each message is removed once a worker acknowledges it."""
    return api.StreamConfig(
        name=name,
        subjects=[subjects] if isinstance(subjects, str) else list(subjects),
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
    )


def streams(replicas: int, events_max_age_s: float) -> list[api.StreamConfig]:
    """Every stream, in the order `ensure()` creates them."""
    storage = api.StorageType.FILE
    return [
        api.StreamConfig(
            name=t.EVENTS,
            subjects=sorted({prefix.split(".")[0] + ".evt.>" for prefix in t.SUBJECTS.values() if ".evt." in prefix}),
            retention=api.RetentionPolicy.LIMITS,
            max_age=events_max_age_s,
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
        ),
        work_queue(t.TASKS_TRANSCODE, TRANSCODE_TASK_SUBJECTS, replicas),
        work_queue(t.TASKS_THUMBNAIL, t.SUBJECTS[c.ExtractThumbnail] + ".>", replicas),
        api.StreamConfig(
            name=t.ADVISORIES,
            subjects=[f"{t.MAX_DELIVERIES_ADVISORY}.{s}.>" for s in t.MEDIA_TASK_STREAMS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=storage,
            num_replicas=replicas,
        ),
        api.StreamConfig(
            name=t.DEADLETTER,
            subjects=[t.DEADLETTER_SUBJECT + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=storage,
            num_replicas=replicas,
        ),
        api.StreamConfig(
            name=t.SCHEDULES,
            subjects=[t.SCHEDULE_PREFIX + ".>", t.TICK_PREFIX + ".>", t.PIPELINE_TICK_PREFIX + ".>"],
            # Ticks leave the stream when handled; definitions stay (no consumer takes them).
            retention=api.RetentionPolicy.WORK_QUEUE,
            allow_msg_schedules=True,
            allow_msg_ttl=True,  # ticks carry Nats-Schedule-TTL: unhandled ones expire
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
        ),
        api.StreamConfig(
            name=t.REPORTS,
            subjects=[t.USAGE_REPORTED_PREFIX + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            max_age=REPORTS_MAX_AGE_S,
            max_msgs_per_subject=1,  # a re-run report for the same tenant and day replaces it
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
        ),
        work_queue(t.TASKS_WEBHOOK, t.SUBJECTS[c.DeliverWebhook] + ".>", replicas),
        api.StreamConfig(
            name=t.OPS,
            subjects=[t.LOG_PREFIX + ".>", t.METRICS_PREFIX + ".>", t.ALERT_PREFIX + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            max_age=OPS_MAX_AGE_S,
            max_bytes=512 * 1024 * 1024,  # logs must never fill the disk: oldest go first
            storage=storage,
            num_replicas=replicas,
            duplicate_window=60.0,
        ),
    ]


def consumer_config(spec: ConsumerSpec, settings) -> api.ConsumerConfig:
    """A durable consumer's configuration, its delivery limits as `spec.delivery` gives them."""
    multi = len(spec.filters) > 1
    max_deliver, ack_wait_s = spec.delivery(settings)
    return api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=None if multi else spec.filters[0],
        filter_subjects=list(spec.filters) if multi else None,
    )


def buckets(settings) -> list[tuple[str, float | None]]:
    """Every KV bucket with its TTL (None: entries stay)."""
    return [
        (t.KV_VIDEOS, None),
        (t.KV_JOBS, None),
        (t.KV_UPLOADS, UPLOADS_TTL_S),
        (t.KV_ADMISSIONS, UPLOADS_TTL_S),  # live entries are minutes old; an idle tenant's key goes
        (t.KV_MONITOR, None),
        # Delivery records expire with the events they describe; webhooks and runs stay.
        (t.KV_WEBHOOKS, None),
        (t.KV_DELIVERIES, settings.events_max_age_s),
        (t.KV_SCHEDULER, None),
        (t.KV_PIPELINE, None),
        (t.KV_RESUMABLE, None),
    ]


async def ensure(js, settings, consumers) -> None:
    """Create or update every stream, bucket and the given durable consumers (the mesh's,
    from the services' declarations); safe to run from every replica."""
    for cfg in streams(settings.replicas, settings.events_max_age_s):
        await _ensure_stream(js, cfg)
    for spec in consumers:
        await js.add_consumer(spec.stream, config=consumer_config(spec, settings))
    for bucket, ttl in buckets(settings):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket, history=1, ttl=ttl, replicas=settings.replicas, storage=api.StorageType.FILE
                )
            )
    try:
        await js.object_store(t.OBJ_MEDIA)
    except BucketNotFoundError:
        # nats-py overwrites config.bucket with the first argument, so the name goes there.
        await js.create_object_store(
            t.OBJ_MEDIA,
            config=api.ObjectStoreConfig(bucket=t.OBJ_MEDIA, replicas=settings.replicas, storage=api.StorageType.FILE),
        )


async def _ensure_stream(js, cfg: api.StreamConfig) -> None:
    try:
        await js.add_stream(config=cfg)
    except BadRequestError:
        # Exists with another config (e.g. replicas changed): update in place.
        await js.update_stream(config=cfg)

"""The bus topology: subjects, streams, buckets and keys (the durable consumers are each
declared by the service that pulls them, in services/<name>/declaration.py).

Subjects read `<owner>.<kind>.<name>[.<tenant>.<video_id>]` with kind `rpc`, `cmd` or `evt`.
Events and tasks carry the tenant and video id as the last two tokens, so a consumer
(or an SSE stream) can filter one video's history without reading anyone else's.
No stream captures an `rpc` subject: JetStream would answer the request with a PubAck.

Each kind is declared once, in this order: subjects, request-reply subjects, streams,
buckets, keys, then `ensure()`, which creates them all.
"""

from __future__ import annotations

import logging
from nats.js import api
from nats.js.errors import BadRequestError, BucketNotFoundError

from . import contracts as c
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

log = logging.getLogger("vidmesh.topology")

# --- subjects ------------------------------------------------------------------------------

# Each message type has exactly one subject prefix; `subject_for` appends tenant and video.
# The EVENTS stream captures every `<owner>.evt.>` named here, so nothing here may claim
# `scheduler.evt.>` (EVENTS would then overlap REPORTS).
SUBJECTS: dict[type, str] = {
    VideoUploaded: "gateway.evt.video_uploaded",
    VideoPlanned: "pipeline.evt.video_planned",
    ChunkProgress: "transcoder.evt.chunk_progress",
    ChunkEncoded: "transcoder.evt.chunk_encoded",
    AudioEncoded: "transcoder.evt.audio_encoded",
    RenditionStitched: "transcoder.evt.rendition_stitched",
    ThumbnailExtracted: "thumbnailer.evt.thumbnail_extracted",
    TaskFailed: "worker.evt.task_failed",
    VideoPlayable: "pipeline.evt.video_playable",
    VideoReady: "pipeline.evt.video_ready",
    VideoFailed: "pipeline.evt.video_failed",
    VideoDeleted: "catalog.evt.video_deleted",
    EncodeChunk: "transcoder.cmd.encode_chunk",
    EncodeAudio: "transcoder.cmd.encode_audio",
    StitchRenditions: "transcoder.cmd.stitch_renditions",
    ExtractThumbnail: "thumbnailer.cmd.extract_thumbnail",
    DeliverWebhook: "notifier.cmd.deliver_webhook",
}

DEADLETTER_SUBJECT = "dlq.evt"  # dlq.evt.<stream>.<consumer>
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"  # + .<stream>.<consumer>

# Schedules live in the server (ADR-51 message scheduler): a schedule is one message with a
# `Nats-Schedule` header on `scheduler.schedule.<name>` (kind `schedule`: a standing
# definition the server fires, never consumed), in a stream with allow_msg_schedules. The
# server writes each tick into the same stream on `<owner>.cmd.tick.<name>`, the owner being
# the service whose records the job reads and changes: the pipeline re-drives its own jobs,
# the scheduler runs the other jobs. Each owner's consumer takes only its own prefix
# (SCHEDULES is a work queue: the filters of its consumers must not overlap).
SCHEDULE_PREFIX = "scheduler.schedule"  # + .<name>: one schedule definition per subject
TICK_PREFIX = "scheduler.cmd.tick"  # + .<name>: what a schedule fires
PIPELINE_TICK_PREFIX = "pipeline.cmd.tick"  # + .<name>: the ticks of PIPELINE_SCHEDULES
PIPELINE_SCHEDULES = frozenset({"redrive"})
USAGE_REPORTED_PREFIX = "scheduler.evt.usage_reported"  # + .<tenant>.<YYYY-MM-DD>

# Every service publishes its log records (warning and above, or VIDMESH_LOG_EVENTS_LEVEL)
# and a periodic metric sample on `logs.evt.<service>` / `metrics.evt.<service>`; the monitor
# consumes them with the consumer lag of every durable consumer, evaluates its alert rules
# and announces alert changes on `monitor.evt.alert.<rule>`.
LOG_PREFIX = "logs.evt"  # + .<service>
METRICS_PREFIX = "metrics.evt"  # + .<service>
ALERT_PREFIX = "monitor.evt.alert"  # + .<rule>


def subject_for(msg) -> str:
    """The subject a message is published on: its type's prefix, tenant, video id."""
    return f"{SUBJECTS[type(msg)]}.{msg.tenant}.{msg.video_id}"


def video_events_filter(tenant: str, video_id: str) -> str:
    """Every event of one video (SSE history and live tail)."""
    return f"*.evt.*.{tenant}.{video_id}"


def schedule_subject(name: str) -> str:
    return f"{SCHEDULE_PREFIX}.{name}"


def tick_subject(name: str) -> str:
    """Where a schedule's ticks go: its owner's tick prefix."""
    return f"{PIPELINE_TICK_PREFIX if name in PIPELINE_SCHEDULES else TICK_PREFIX}.{name}"


def usage_subject(tenant: str, day: str) -> str:
    return f"{USAGE_REPORTED_PREFIX}.{tenant}.{day}"


# --- request-reply subjects ----------------------------------------------------------------

RPC_CATALOG_GET = "catalog.rpc.get"
RPC_CATALOG_LIST = "catalog.rpc.list"
RPC_CATALOG_DELETE = "catalog.rpc.delete"
RPC_CATALOG_USAGE = "catalog.rpc.usage"  # per-tenant usage for the gateway's quotas
RPC_CATALOG_PLAYLIST = "catalog.rpc.playlist"  # the stored segments HLS playlists list
RPC_PIPELINE_PROBE = "pipeline.rpc.probe"
RPC_WEBHOOK_CREATE = "notifier.rpc.create_webhook"
RPC_WEBHOOK_LIST = "notifier.rpc.list_webhooks"
RPC_WEBHOOK_GET = "notifier.rpc.get_webhook"
RPC_WEBHOOK_DELETE = "notifier.rpc.delete_webhook"
RPC_WEBHOOK_DELIVERIES = "notifier.rpc.list_deliveries"
RPC_MONITOR_ALERTS = "monitor.rpc.alerts"
# + .<gateway instance>: the gateway holding a resumable upload's lock hands it over (a
# client resuming through another replica, or after its connection dropped silently);
# "no responders" means that gateway is gone and its lock can be taken at once.
RPC_GATEWAY_RELEASE_UPLOAD = "gateway.rpc.release_upload"

# What each endpoint takes and answers: the server decodes requests with the first, callers
# decode replies with the second, and the AsyncAPI document shows both.
RPC_TYPES: dict[str, tuple[type, type]] = {
    RPC_CATALOG_GET: (c.GetVideo, c.Video),
    RPC_CATALOG_LIST: (c.ListVideos, c.VideoPage),
    RPC_CATALOG_DELETE: (c.DeleteVideo, c.Video),
    RPC_CATALOG_USAGE: (c.GetUsage, c.Usage),
    RPC_CATALOG_PLAYLIST: (c.GetPlaylist, c.Playlist),
    RPC_PIPELINE_PROBE: (c.ProbeSource, c.Probed),
    RPC_WEBHOOK_CREATE: (c.CreateWebhook, c.Webhook),
    RPC_WEBHOOK_LIST: (c.ListWebhooks, c.WebhookPage),
    RPC_WEBHOOK_GET: (c.GetWebhook, c.Webhook),
    RPC_WEBHOOK_DELETE: (c.DeleteWebhook, c.Webhook),
    RPC_WEBHOOK_DELIVERIES: (c.ListDeliveries, c.DeliveryPage),
    RPC_MONITOR_ALERTS: (c.GetAlerts, c.AlertList),
}

# --- streams -------------------------------------------------------------------------------

EVENTS = "EVENTS"
TASKS_TRANSCODE = "TASKS_TRANSCODE"
TASKS_THUMBNAIL = "TASKS_THUMBNAIL"
# The media work queues: VIDMESH_TASK_ACK_WAIT_S / VIDMESH_TASK_MAX_DELIVER apply to them and
# their exhausted deliveries are dead-lettered by the pipeline (not TASKS_WEBHOOK: the
# notifier counts its own attempts).
MEDIA_TASK_STREAMS = (TASKS_TRANSCODE, TASKS_THUMBNAIL)
TASKS_WEBHOOK = "TASKS_WEBHOOK"
# The server announces a message that ran out of deliveries (e.g. its worker crashed on
# every attempt); this stream keeps those advisories until the pipeline dead-letters them.
ADVISORIES = "ADVISORIES"
DEADLETTER = "DEADLETTER"
# Schedule definitions and their ticks. No scheduler process is special: in a cluster the
# stream's leader fires the schedules.
SCHEDULES = "SCHEDULES"
# Usage reports are per tenant and day, kept for billing far longer than video events, so
# they have their own stream.
REPORTS = "REPORTS"
REPORTS_MAX_AGE_S = 400 * 86400.0
OPS = "OPS"  # logs, metrics and alerts
OPS_MAX_AGE_S = 24 * 3600.0


# The transcoder's work queue carries its three kinds of task: chunks, the audio, the stitch.
TRANSCODE_TASK_SUBJECTS = [SUBJECTS[kind] + ".>" for kind in (EncodeChunk, EncodeAudio, StitchRenditions)]


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
            name=EVENTS,
            subjects=sorted({prefix.split(".")[0] + ".evt.>" for prefix in SUBJECTS.values() if ".evt." in prefix}),
            retention=api.RetentionPolicy.LIMITS,
            max_age=events_max_age_s,
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
        ),
        work_queue(TASKS_TRANSCODE, TRANSCODE_TASK_SUBJECTS, replicas),
        work_queue(TASKS_THUMBNAIL, SUBJECTS[ExtractThumbnail] + ".>", replicas),
        api.StreamConfig(
            name=ADVISORIES,
            subjects=[f"{MAX_DELIVERIES_ADVISORY}.{s}.>" for s in MEDIA_TASK_STREAMS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=storage,
            num_replicas=replicas,
        ),
        api.StreamConfig(
            name=DEADLETTER,
            subjects=[DEADLETTER_SUBJECT + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=storage,
            num_replicas=replicas,
        ),
        api.StreamConfig(
            name=SCHEDULES,
            subjects=[SCHEDULE_PREFIX + ".>", TICK_PREFIX + ".>", PIPELINE_TICK_PREFIX + ".>"],
            # Ticks leave the stream when handled; definitions stay (no consumer takes them).
            retention=api.RetentionPolicy.WORK_QUEUE,
            allow_msg_schedules=True,
            allow_msg_ttl=True,  # ticks carry Nats-Schedule-TTL: unhandled ones expire
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
        ),
        api.StreamConfig(
            name=REPORTS,
            subjects=[USAGE_REPORTED_PREFIX + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            max_age=REPORTS_MAX_AGE_S,
            max_msgs_per_subject=1,  # a re-run report for the same tenant and day replaces it
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
        ),
        work_queue(TASKS_WEBHOOK, SUBJECTS[DeliverWebhook] + ".>", replicas),
        api.StreamConfig(
            name=OPS,
            subjects=[LOG_PREFIX + ".>", METRICS_PREFIX + ".>", ALERT_PREFIX + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            max_age=OPS_MAX_AGE_S,
            max_bytes=512 * 1024 * 1024,  # logs must never fill the disk: oldest go first
            storage=storage,
            num_replicas=replicas,
            duplicate_window=60.0,
        ),
    ]


# --- consumers ------------------------------------------------------------------------------

# Each service declares the durable consumers it pulls (services/<name>/declaration.py);
# `ensure()` is handed the mesh's list.


def consumer_config(spec, max_deliver: int | None = None, ack_wait_s: float | None = None):
    multi = len(spec.filters) > 1
    return api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s or spec.ack_wait_s,
        max_deliver=max_deliver or spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=None if multi else spec.filters[0],
        filter_subjects=list(spec.filters) if multi else None,
    )


# --- buckets -------------------------------------------------------------------------------

KV_VIDEOS = "videos"  # catalog: the public state of every video, key <tenant>.<video_id>
KV_JOBS = "jobs"  # pipeline: fan-in bookkeeping, key <tenant>.<video_id>
KV_UPLOADS = "uploads"  # gateway: Idempotency-Key -> video id, kept for a day
UPLOADS_TTL_S = 24 * 3600.0
KV_ADMISSIONS = "admissions"  # gateway: per tenant, the uploads admitted under quotas and still streaming
# monitor: `load` (backpressure: the transcode backlog, which the gateway reads for its 429s),
# `alerts` (what fires now)
KV_MONITOR = "monitor"
KV_WEBHOOKS = "webhooks"  # notifier: key <tenant>.<webhook_id> (holds the signing secret)
KV_DELIVERIES = "webhook_deliveries"  # notifier: key <tenant>.<webhook_id>.<delivery_id>
KV_SCHEDULER = "scheduler"  # scheduler: run.<name> (last run of each of its schedules)
# pipeline: redrive.<tenant>.<video_id> (re-drive attempts of a stuck video), run.<name>
# (last run of each of PIPELINE_SCHEDULES)
KV_PIPELINE = "pipeline"
OBJ_MEDIA = "media"  # uploads, renditions and thumbnails
MEDIA_STREAM = f"OBJ_{OBJ_MEDIA}"  # the stream behind the object store
# gateway: resumable (tus) uploads `up.<tenant>.<upload_id>` (offset, chunk checkpoints,
# lock) and one-time direct-upload URLs `du.<digest of the URL's secret>`; the scheduler's
# `upload_expiry` job removes expired ones (no bucket TTL: it must find their chunks first)
KV_RESUMABLE = "resumable_uploads"


def buckets(settings) -> list[tuple[str, float | None]]:
    """Every KV bucket with its TTL (None: entries stay)."""
    return [
        (KV_VIDEOS, None),
        (KV_JOBS, None),
        (KV_UPLOADS, UPLOADS_TTL_S),
        (KV_ADMISSIONS, UPLOADS_TTL_S),  # live entries are minutes old; an idle tenant's key goes
        (KV_MONITOR, None),
        # Delivery records expire with the events they describe; webhooks and runs stay.
        (KV_WEBHOOKS, None),
        (KV_DELIVERIES, settings.events_max_age_s),
        (KV_SCHEDULER, None),
        (KV_PIPELINE, None),
        (KV_RESUMABLE, None),
    ]


# The buckets holding the run records of schedules: each tick's owner keeps its own.
RUN_BUCKETS = (KV_SCHEDULER, KV_PIPELINE)


# --- keys ----------------------------------------------------------------------------------


def media_key(tenant: str, video_id: str, name: str) -> str:
    """Object key of one piece of media; tenant first so keys never mix tenants."""
    return f"{tenant}/{video_id}/{name}"


def source_key(tenant: str, video_id: str) -> str:
    return media_key(tenant, video_id, "source")


def rendition_key(tenant: str, video_id: str, rendition: str) -> str:
    return media_key(tenant, video_id, f"renditions/{rendition}.mp4")


AUDIO_TRACK = "audio"  # the name of the audio track's fragments, beside the renditions'


def init_key(tenant: str, video_id: str, track: str) -> str:
    """The CMAF init segment of a rendition (or of AUDIO_TRACK)."""
    return media_key(tenant, video_id, f"cmaf/{track}/init.mp4")


def segment_key(tenant: str, video_id: str, track: str, index: int) -> str:
    """The CMAF fragment of one segment of a rendition (or of AUDIO_TRACK)."""
    return media_key(tenant, video_id, f"cmaf/{track}/{index:05d}.m4s")


def thumbnail_key(tenant: str, video_id: str) -> str:
    return media_key(tenant, video_id, "thumbnail.jpg")


def state_key(tenant: str, video_id: str) -> str:
    return f"{tenant}.{video_id}"


def webhook_key(tenant: str, webhook_id: str) -> str:
    return f"{tenant}.{webhook_id}"


def delivery_key(tenant: str, webhook_id: str, delivery_id: str) -> str:
    return f"{tenant}.{webhook_id}.{delivery_id}"


# --- ensure --------------------------------------------------------------------------------


async def ensure(js, settings, consumers) -> None:
    """Create or update every stream, bucket and the given durable consumers (the mesh's,
    from the services' declarations); safe to run from every replica."""
    for cfg in streams(settings.replicas, settings.events_max_age_s):
        await _ensure_stream(js, cfg)
    for spec in consumers:
        is_task = spec.stream in MEDIA_TASK_STREAMS
        cfg = consumer_config(
            spec,
            max_deliver=settings.task_max_deliver if is_task else None,
            ack_wait_s=settings.task_ack_wait_s if is_task else None,
        )
        await js.add_consumer(spec.stream, config=cfg)
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
        await js.object_store(OBJ_MEDIA)
    except BucketNotFoundError:
        # nats-py overwrites config.bucket with the first argument, so the name goes there.
        await js.create_object_store(
            OBJ_MEDIA,
            config=api.ObjectStoreConfig(bucket=OBJ_MEDIA, replicas=settings.replicas, storage=api.StorageType.FILE),
        )


async def _ensure_stream(js, cfg: api.StreamConfig) -> None:
    try:
        await js.add_stream(config=cfg)
    except BadRequestError:
        # Exists with another config (e.g. replicas changed): update in place.
        await js.update_stream(config=cfg)

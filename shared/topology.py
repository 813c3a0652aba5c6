"""The names of the bus: subjects, request-reply endpoints, streams, buckets and object keys.
Their configuration, and creating them, is the admin's (services/provision.py); each
durable consumer is declared by the service that pulls it (services/<name>/declaration.py).

Subjects read `<owner>.<kind>.<name>[.<tenant>.<video_id>]` with kind `rpc`, `cmd` or `evt`.
Events and tasks carry the tenant and video id as the last two tokens, so a consumer
(or an SSE stream) can filter one video's history without reading anyone else's.
No stream captures an `rpc` subject: JetStream would answer the request with a PubAck.

Each kind is declared once, in this order: subjects, request-reply subjects, streams,
buckets, keys.
"""

from __future__ import annotations

from typing import Protocol

from . import contracts as c

# --- subjects ------------------------------------------------------------------------------

# Each message type has exactly one subject prefix; `subject_for` appends tenant and video.
# The EVENTS stream captures every `<owner>.evt.>` named here, so nothing here may claim
# `scheduler.evt.>` (EVENTS would then overlap REPORTS).
SUBJECTS: dict[type, str] = {
    c.VideoUploaded: "gateway.evt.video_uploaded",
    c.VideoPlanned: "pipeline.evt.video_planned",
    c.ChunkProgress: "transcoder.evt.chunk_progress",
    c.ChunkEncoded: "transcoder.evt.chunk_encoded",
    c.AudioEncoded: "transcoder.evt.audio_encoded",
    c.RenditionStitched: "transcoder.evt.rendition_stitched",
    c.ThumbnailExtracted: "thumbnailer.evt.thumbnail_extracted",
    c.TaskFailed: "worker.evt.task_failed",
    c.VideoPlayable: "pipeline.evt.video_playable",
    c.VideoReady: "pipeline.evt.video_ready",
    c.VideoFailed: "pipeline.evt.video_failed",
    c.VideoDeleted: "catalog.evt.video_deleted",
    c.EncodeChunk: "transcoder.cmd.encode_chunk",
    c.EncodeAudio: "transcoder.cmd.encode_audio",
    c.StitchRenditions: "transcoder.cmd.stitch_renditions",
    c.ExtractThumbnail: "thumbnailer.cmd.extract_thumbnail",
    c.DeliverWebhook: "notifier.cmd.deliver_webhook",
}

DEADLETTER_SUBJECT = "dlq.evt"  # dlq.evt.<stream>.<consumer>


def dead_letter_subject(stream: str, consumer: str) -> str:
    """Where a consumer's poison messages and exhausted tasks are recorded."""
    return f"{DEADLETTER_SUBJECT}.{stream}.{consumer}"


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


class Addressed(Protocol):
    """A message published on its type's subject prefix, then its tenant and video id."""

    @property
    def tenant(self) -> str: ...

    @property
    def video_id(self) -> str: ...


def subject_for(msg: Addressed) -> str:
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
OPS = "OPS"  # logs, metrics and alerts


# --- buckets -------------------------------------------------------------------------------

KV_VIDEOS = "videos"  # catalog: the public state of every video, key <tenant>.<video_id>
KV_JOBS = "jobs"  # pipeline: fan-in bookkeeping, key <tenant>.<video_id>
KV_UPLOADS = "uploads"  # gateway: Idempotency-Key -> video id, kept for a day
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

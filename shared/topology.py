"""The whole bus topology in one place: subjects, streams, consumers and buckets.

Subjects read `<owner>.<kind>.<name>[.<tenant>.<video_id>]` with kind `rpc`, `cmd` or `evt`.
Events and tasks carry the tenant and video id as the last two tokens, so a consumer
(or an SSE stream) can filter one video's history without reading anyone else's.
No stream captures an `rpc` subject: JetStream would answer the request with a PubAck.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import api
from nats.js.errors import BadRequestError, BucketNotFoundError

from .contracts import (
    ExtractThumbnail,
    RenditionProgress,
    RenditionTranscoded,
    TaskFailed,
    ThumbnailExtracted,
    TranscodeRendition,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
)

log = logging.getLogger("vidmesh.topology")

# --- subjects ------------------------------------------------------------------------------

# Each message type has exactly one subject prefix; `subject_for` appends tenant and video.
SUBJECTS: dict[type, str] = {
    VideoUploaded: "gateway.evt.video_uploaded",
    VideoPlanned: "pipeline.evt.video_planned",
    RenditionProgress: "transcoder.evt.rendition_progress",
    RenditionTranscoded: "transcoder.evt.rendition_transcoded",
    ThumbnailExtracted: "thumbnailer.evt.thumbnail_extracted",
    TaskFailed: "worker.evt.task_failed",
    VideoReady: "pipeline.evt.video_ready",
    VideoFailed: "pipeline.evt.video_failed",
    VideoDeleted: "catalog.evt.video_deleted",
    TranscodeRendition: "transcoder.cmd.transcode_rendition",
    ExtractThumbnail: "thumbnailer.cmd.extract_thumbnail",
}

RPC_CATALOG_GET = "catalog.rpc.get"
RPC_CATALOG_LIST = "catalog.rpc.list"
RPC_CATALOG_DELETE = "catalog.rpc.delete"
RPC_PIPELINE_PROBE = "pipeline.rpc.probe"


def subject_for(msg) -> str:
    """The subject a message is published on: its type's prefix, tenant, video id."""
    return f"{SUBJECTS[type(msg)]}.{msg.tenant}.{msg.video_id}"


def video_events_filter(tenant: str, video_id: str) -> str:
    """Every event of one video (SSE history and live tail)."""
    return f"*.evt.*.{tenant}.{video_id}"


# --- streams -------------------------------------------------------------------------------

EVENTS = "EVENTS"
TASKS_TRANSCODE = "TASKS_TRANSCODE"
TASKS_THUMBNAIL = "TASKS_THUMBNAIL"
DEADLETTER = "DEADLETTER"
DEADLETTER_SUBJECT = "dlq.evt"  # dlq.evt.<stream>.<consumer>

# --- buckets -------------------------------------------------------------------------------

KV_VIDEOS = "videos"  # catalog: the public state of every video, key <tenant>.<video_id>
KV_JOBS = "jobs"  # pipeline: fan-in bookkeeping, key <tenant>.<video_id>
KV_UPLOADS = "uploads"  # gateway: Idempotency-Key -> video id, kept for a day
UPLOADS_TTL_S = 24 * 3600.0
OBJ_MEDIA = "media"  # uploads, renditions and thumbnails


def media_key(tenant: str, video_id: str, name: str) -> str:
    """Object key of one piece of media; tenant first so keys never mix tenants."""
    return f"{tenant}/{video_id}/{name}"


def source_key(tenant: str, video_id: str) -> str:
    return media_key(tenant, video_id, "source")


def rendition_key(tenant: str, video_id: str, rendition: str) -> str:
    return media_key(tenant, video_id, f"renditions/{rendition}.mp4")


def thumbnail_key(tenant: str, video_id: str) -> str:
    return media_key(tenant, video_id, "thumbnail.jpg")


def state_key(tenant: str, video_id: str) -> str:
    return f"{tenant}.{video_id}"


# --- consumers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filters: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000


CATALOG_EVENTS = ConsumerSpec(EVENTS, "catalog", ("*.evt.>",), ack_wait_s=30.0, max_deliver=20)
PIPELINE_EVENTS = ConsumerSpec(
    EVENTS,
    "pipeline",
    (
        SUBJECTS[VideoUploaded] + ".>",
        SUBJECTS[RenditionTranscoded] + ".>",
        SUBJECTS[ThumbnailExtracted] + ".>",
        SUBJECTS[TaskFailed] + ".>",
        SUBJECTS[VideoDeleted] + ".>",
    ),
    max_deliver=20,
)
TRANSCODE_TASKS = ConsumerSpec(TASKS_TRANSCODE, "transcoder", (SUBJECTS[TranscodeRendition] + ".>",))
THUMBNAIL_TASKS = ConsumerSpec(TASKS_THUMBNAIL, "thumbnailer", (SUBJECTS[ExtractThumbnail] + ".>",))

CONSUMERS = (CATALOG_EVENTS, PIPELINE_EVENTS, TRANSCODE_TASKS, THUMBNAIL_TASKS)


def streams(replicas: int, events_max_age_s: float) -> list[api.StreamConfig]:
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
        api.StreamConfig(
            name=TASKS_TRANSCODE,
            subjects=[SUBJECTS[TranscodeRendition] + ".>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
        ),
        api.StreamConfig(
            name=TASKS_THUMBNAIL,
            subjects=[SUBJECTS[ExtractThumbnail] + ".>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=storage,
            num_replicas=replicas,
            duplicate_window=120.0,
        ),
        api.StreamConfig(
            name=DEADLETTER,
            subjects=[DEADLETTER_SUBJECT + ".>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=storage,
            num_replicas=replicas,
        ),
    ]


def consumer_config(spec: ConsumerSpec, max_deliver: int | None = None, ack_wait_s: float | None = None):
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


async def ensure(js, settings) -> None:
    """Create or update every stream, consumer and bucket; safe to run from every replica."""
    for cfg in streams(settings.replicas, settings.events_max_age_s):
        await _ensure_stream(js, cfg)
    for spec in CONSUMERS:
        is_task = spec.stream in (TASKS_TRANSCODE, TASKS_THUMBNAIL)
        cfg = consumer_config(
            spec,
            max_deliver=settings.task_max_deliver if is_task else None,
            ack_wait_s=settings.task_ack_wait_s if is_task else None,
        )
        await js.add_consumer(spec.stream, config=cfg)
    for bucket, ttl in ((KV_VIDEOS, None), (KV_JOBS, None), (KV_UPLOADS, UPLOADS_TTL_S)):
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
        # Trap (guide): config.bucket is overwritten by the first argument, so pass it there.
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

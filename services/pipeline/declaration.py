"""The pipeline's bus contract: uploads and task results in; tasks, the video's milestones
and dead letters out."""

from shared import topology as t
from shared.contracts import (
    AudioEncoded,
    ChunkEncoded,
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
from shared.declaration import ConsumerSpec, Declaration, every

EVENTS = ConsumerSpec(
    t.EVENTS,
    "pipeline",
    tuple(
        every(kind)
        for kind in (
            VideoUploaded,
            ChunkEncoded,
            AudioEncoded,
            RenditionStitched,
            ThumbnailExtracted,
            TaskFailed,
            VideoDeleted,
        )
    ),
    max_deliver=20,
)
# The server's max-deliveries advisories of the media work queues: tasks whose worker died
# on every attempt, which the pipeline fails and dead-letters.
EXHAUSTED_TASKS = ConsumerSpec(
    t.ADVISORIES, "deadletter", tuple(f"{t.MAX_DELIVERIES_ADVISORY}.{s}.>" for s in t.MEDIA_TASK_STREAMS)
)

DECLARATION = Declaration(
    "pipeline",
    "Probe uploads, fan out chunks, audio and a thumbnail, fan in, stitch",
    publishes=(
        VideoPlanned,
        VideoPlayable,
        VideoReady,
        VideoFailed,
        EncodeChunk,
        EncodeAudio,
        StitchRenditions,
        ExtractThumbnail,
        TaskFailed,
        *(f"{t.DEADLETTER_SUBJECT}.{s}.*" for s in t.MEDIA_TASK_STREAMS),
    ),
    consumes=(EVENTS, EXHAUSTED_TASKS),
    serves=(t.RPC_PIPELINE_PROBE,),
    writes_kv=(t.KV_JOBS,),
    media="write",  # reads uploads to probe; deletes outputs of deleted videos
    reads_messages=t.MEDIA_TASK_STREAMS,
    deletes_messages=t.MEDIA_TASK_STREAMS,
)

"""The pipeline's bus contract: uploads, task results and its schedules' ticks in; tasks,
the video's milestones and dead letters out."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, every

# A video's uploads and task results, and its deletion (which stops its work).
INPUTS = (c.VideoUploaded, c.ChunkEncoded, c.AudioEncoded, c.RenditionStitched, c.ThumbnailExtracted, c.TaskFailed)
EVENTS = ConsumerSpec(t.EVENTS, "pipeline", tuple(every(k) for k in (*INPUTS, c.VideoDeleted)), max_deliver=20)
# The server's max-deliveries advisories of the media work queues: tasks whose worker died
# on every attempt, which the pipeline fails and dead-letters.
EXHAUSTED_TASKS = ConsumerSpec(
    t.ADVISORIES, "deadletter", tuple(f"{t.MAX_DELIVERIES_ADVISORY}.{s}.>" for s in t.MEDIA_TASK_STREAMS)
)
# The ticks of the schedules whose job is the pipeline's (re-drive of stuck videos), fired
# by the server into SCHEDULES; one work-queue consumer takes each tick once.
TICKS = ConsumerSpec(t.SCHEDULES, "pipeline", (t.PIPELINE_TICK_PREFIX + ".>",), max_deliver=3)

DECLARATION = Declaration(
    "pipeline",
    "Probe uploads, fan out chunks, audio and a thumbnail, fan in, stitch",
    publishes=(
        *(c.VideoPlanned, c.VideoPlayable, c.VideoReady, c.VideoFailed, c.TaskFailed),
        *(c.EncodeChunk, c.EncodeAudio, c.StitchRenditions, c.ExtractThumbnail),
        *(f"{t.DEADLETTER_SUBJECT}.{s}.*" for s in t.MEDIA_TASK_STREAMS),
    ),
    consumes=(EVENTS, EXHAUSTED_TASKS, TICKS),
    serves=(t.RPC_PIPELINE_PROBE,),
    writes_kv=(t.KV_JOBS, t.KV_PIPELINE),  # its jobs; re-drive attempts and run records
    media="write",  # reads uploads to probe; deletes outputs of deleted videos
    reads_messages=t.MEDIA_TASK_STREAMS,  # re-drive: which tasks are still queued
    deletes_messages=t.MEDIA_TASK_STREAMS,
)

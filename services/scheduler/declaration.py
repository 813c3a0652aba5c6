"""The scheduler's bus contract: it declares the server-side schedules and handles their
ticks (retention, re-drive, usage report, upload expiry)."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, kv_stream

# One work-queue consumer shared by every scheduler replica takes each tick exactly once.
TICKS = ConsumerSpec(t.SCHEDULES, "scheduler", (t.TICK_PREFIX + ".>",), max_deliver=3)

DECLARATION = Declaration(
    "scheduler",
    "Server-side schedules (retention, re-drive, usage report) and the jobs they fire",
    publishes=(
        t.SCHEDULE_PREFIX + ".>",  # declares the schedules
        t.USAGE_REPORTED_PREFIX + ".>",
        c.EncodeChunk,  # re-drive
        c.EncodeAudio,
        c.StitchRenditions,
        c.ExtractThumbnail,
        c.TaskFailed,  # a stuck video fails like a worker that gave up
    ),
    consumes=(TICKS,),
    calls=(t.RPC_CATALOG_GET, t.RPC_CATALOG_LIST, t.RPC_CATALOG_DELETE),
    writes_kv=(t.KV_SCHEDULER, t.KV_RESUMABLE),  # upload_expiry removes expired uploads
    reads_kv=(t.KV_JOBS, t.KV_VIDEOS),
    reads_messages=(t.SCHEDULES, *t.MEDIA_TASK_STREAMS),
    # a schedule set to `off`; an expired upload's chunks, and its key once deleted
    purges=(t.SCHEDULES, t.MEDIA_STREAM, kv_stream(t.KV_RESUMABLE)),
)

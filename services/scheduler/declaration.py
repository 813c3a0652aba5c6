"""The scheduler's bus contract: it declares the server-side schedules (re-drive's too) and
handles the ticks of its own jobs (retention, usage report, upload expiry)."""

from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, kv_stream

# One work-queue consumer shared by every scheduler replica takes each tick exactly once;
# the pipeline's schedules tick on its own prefix (topology.tick_subject).
TICKS = ConsumerSpec(t.SCHEDULES, "scheduler", (t.TICK_PREFIX + ".>",), max_deliver=3)

DECLARATION = Declaration(
    "scheduler",
    "Server-side schedules (retention, re-drive, usage report) and the jobs they fire",
    publishes=(
        t.SCHEDULE_PREFIX + ".>",  # declares the schedules
        t.USAGE_REPORTED_PREFIX + ".>",
    ),
    consumes=(TICKS,),
    calls=(t.RPC_CATALOG_GET, t.RPC_CATALOG_LIST, t.RPC_CATALOG_DELETE),
    writes_kv=(t.KV_SCHEDULER, t.KV_RESUMABLE),  # upload_expiry removes expired uploads
    reads_kv=(t.KV_VIDEOS,),
    reads_messages=(t.SCHEDULES,),
    # a schedule set to `off`; an expired upload's chunks, and its key once deleted
    purges=(t.SCHEDULES, t.MEDIA_STREAM, kv_stream(t.KV_RESUMABLE)),
)

"""The gateway's bus contract: uploads in, questions to the catalog, notifier, pipeline and
monitor, media out."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import Declaration

DECLARATION = Declaration(
    "gateway",
    "The public HTTP API of vidmesh",
    publishes=(c.VideoUploaded,),
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
    deletes_messages=(t.MEDIA_STREAM,),  # a resumable upload's chunks its state never recorded
    follows=(t.EVENTS,),  # SSE: one video's events
    watches=(t.TASKS_TRANSCODE,),  # backpressure when the monitor is silent
    public_http=True,
)

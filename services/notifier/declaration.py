"""The notifier's bus contract: a video's outcome in, one delivery task per webhook, the
webhooks' and deliveries' records in its own buckets."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, every

EVENTS = ConsumerSpec(
    t.EVENTS, "notifier", tuple(every(k) for k in (c.VideoReady, c.VideoFailed, c.VideoDeleted)), max_deliver=20
)
# The notifier stops a delivery after VIDMESH_WEBHOOK_MAX_ATTEMPTS itself (it knows the
# setting); the server's max_deliver is only a backstop for a handler that keeps crashing.
DELIVERIES = ConsumerSpec(t.TASKS_WEBHOOK, "notifier", (every(c.DeliverWebhook),), max_deliver=100)

DECLARATION = Declaration(
    "notifier",
    "Signed webhooks for video.ready, video.failed and video.deleted",
    publishes=(c.DeliverWebhook,),
    consumes=(EVENTS, DELIVERIES),
    serves=(
        t.RPC_WEBHOOK_CREATE,
        t.RPC_WEBHOOK_LIST,
        t.RPC_WEBHOOK_GET,
        t.RPC_WEBHOOK_DELETE,
        t.RPC_WEBHOOK_DELIVERIES,
    ),
    calls=(t.RPC_CATALOG_GET,),
    writes_kv=(t.KV_WEBHOOKS, t.KV_DELIVERIES),
)

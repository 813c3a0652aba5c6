"""The catalog's bus contract: it folds every video event into the `videos` bucket and
answers questions about videos."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration

EVENTS = ConsumerSpec(t.EVENTS, "catalog", ("*.evt.>",), max_deliver=20)

DECLARATION = Declaration(
    "catalog",
    "The state of every video: get, list and delete",
    publishes=(c.VideoDeleted,),
    consumes=(EVENTS,),
    serves=(t.RPC_CATALOG_GET, t.RPC_CATALOG_LIST, t.RPC_CATALOG_DELETE, t.RPC_CATALOG_USAGE, t.RPC_CATALOG_PLAYLIST),
    writes_kv=(t.KV_VIDEOS,),
    media="write",  # deletes a deleted video's media
)

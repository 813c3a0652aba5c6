"""The monitor's bus contract: every service's log records and metric samples in, the lag
of every durable consumer watched, alerts and the load state out."""

from shared import topology as t
from shared.declaration import WATCH_ALL, ConsumerSpec, Declaration

INPUT = ConsumerSpec(t.OPS, "monitor", (t.LOG_PREFIX + ".>", t.METRICS_PREFIX + ".>"), max_deliver=5)

DECLARATION = Declaration(
    "monitor",
    "Alert rules over logs, metrics and lag; the load state for backpressure",
    publishes=(t.ALERT_PREFIX + ".>",),
    consumes=(INPUT,),
    serves=(t.RPC_MONITOR_ALERTS,),
    writes_kv=(t.KV_MONITOR,),
    watches=(WATCH_ALL,),
    inspects=(t.DEADLETTER,),
)

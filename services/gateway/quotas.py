"""Per-tenant quotas, checked before an upload is accepted.

- videos processing at once: `VIDMESH_QUOTA_MAX_PROCESSING` (per tenant:
  `VIDMESH_QUOTA_MAX_PROCESSING_BY_TENANT=acme:10,bob:2`): over it, `429 quota_processing`
  with `Retry-After` (waiting helps: videos finish);
- bytes stored (sources, renditions, thumbnails of the videos not deleted):
  `VIDMESH_QUOTA_MAX_BYTES` (`VIDMESH_QUOTA_MAX_BYTES_BY_TENANT`): an upload that would pass
  it gets `403 quota_storage` (waiting does not help: delete videos). The budget also caps
  the streamed body, so an upload without Content-Length cannot overshoot it either.

0 means no limit (the default), and then the catalog is not asked at all. The usage comes
from the catalog (`catalog.rpc.usage`). Uploads racing each other may pass the processing
limit by the number in flight at that instant, and renditions add bytes after the check:
quotas bound use, they are not an exact ledger.
"""

from __future__ import annotations

from shared import topology
from shared.contracts import GetUsage, Usage


class QuotaExceeded(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def limits_for(settings, tenant: str) -> tuple[int, int]:
    """(max videos processing, max bytes stored) of a tenant; 0: no limit."""
    return (
        settings.quota_max_processing_by_tenant.get(tenant, settings.quota_max_processing),
        settings.quota_max_bytes_by_tenant.get(tenant, settings.quota_max_bytes),
    )


async def check(bus, tenant: str, incoming: int | None = None) -> int | None:
    """Raise QuotaExceeded when the tenant may not upload now; else the bytes it may still
    store (None: no storage limit). `incoming`: the upload's Content-Length, if known."""
    settings = bus.settings
    max_processing, max_bytes = limits_for(settings, tenant)
    if not max_processing and not max_bytes:
        return None
    usage: Usage = await bus.request(topology.RPC_CATALOG_USAGE, GetUsage(tenant=tenant), Usage, timeout=10)
    if max_processing and usage.processing >= max_processing:
        raise QuotaExceeded(
            429,
            "quota_processing",
            f"{usage.processing} videos are processing (limit {max_processing} for this tenant); retry when one is done",
            {"Retry-After": str(settings.retry_after_s)},
        )
    if not max_bytes:
        return None
    left = max_bytes - usage.stored_bytes
    if left <= 0 or (incoming is not None and incoming > left):
        raise QuotaExceeded(403, "quota_storage", storage_message(usage.stored_bytes, max_bytes))
    return left


def storage_message(stored: int, max_bytes: int) -> str:
    return f"{stored} bytes stored of this tenant's {max_bytes}; delete videos to upload more"

"""Per-tenant quotas, checked before an upload is accepted.

- videos processing at once: `VIDMESH_QUOTA_MAX_PROCESSING` (per tenant:
  `VIDMESH_QUOTA_MAX_PROCESSING_BY_TENANT=acme:10,bob:2`): over it, `429 quota_processing`
  with `Retry-After` (waiting helps: videos finish);
- bytes stored (sources, renditions, thumbnails of the videos not deleted):
  `VIDMESH_QUOTA_MAX_BYTES` (`VIDMESH_QUOTA_MAX_BYTES_BY_TENANT`): an upload that would pass
  it gets `403 quota_storage` (waiting does not help: delete videos). The budget also caps
  the streamed body, so an upload without Content-Length cannot overshoot it either.

0 means no limit (the default), and then nothing is asked at all. Usage comes from the
catalog (`catalog.rpc.usage`, which counts only what it has projected), so uploads still
streaming are counted from the tenant's admission ledger: one KV entry per tenant in the
`admissions` bucket listing the uploads admitted and not yet announced (with the bytes each
reserved: its Content-Length, or all that was left when it has none). Admission is a
compare-and-set on that entry, so concurrent uploads through any number of gateways are
admitted one after another and cannot pass a limit together. An entry holds for HOLD_S
and is renewed while its upload streams, so a gateway that dies frees its slots.
Renditions add bytes after admission: the storage quota bounds uploads, it is not an
exact ledger of every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from shared import topology
from shared.bus import KvContention, kv_update
from shared.contracts import GetUsage, Usage

log = logging.getLogger("vidmesh.gateway")

HOLD_S = 120.0  # an admission not renewed for this long is dropped (its gateway died)
CAS_ATTEMPTS = 20

# video id -> (held until, bytes reserved)
_ledger = msgspec.json.Decoder(dict[str, tuple[float, int]])


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


@contextlib.asynccontextmanager
async def admitted(bus, tenant: str, video_id: str, incoming: int | None = None) -> AsyncIterator[int | None]:
    """Admit one upload under the tenant's quotas (QuotaExceeded if it may not start) and
    hold its place until the block ends: leave it once the upload is announced (or refused).
    Yields the bytes the upload may store (None: no storage limit). `incoming`: the upload's
    Content-Length, if known."""
    max_processing, max_bytes = limits_for(bus.settings, tenant)
    if not max_processing and not max_bytes:
        yield None
        return
    budget = await _admit(bus, tenant, video_id, incoming, max_processing, max_bytes)
    renew = asyncio.create_task(_renew(bus, tenant, video_id))
    try:
        yield budget
    finally:
        renew.cancel()
        await asyncio.shield(_change(bus, tenant, lambda ledger: ledger.pop(video_id, None)))


# Resumable uploads reserve their Upload-Length in the ledger until they complete or expire
# (`reserve`): they count against the storage budget, but an upload paused for hours is not
# a video processing, so they do not count against the processing quota.
RESUMABLE = "tus:"


async def reserve(bus, tenant: str, upload_id: str, length: int, until: float) -> None:
    """Admit a resumable upload of `length` bytes (QuotaExceeded if it may not start) and keep
    its bytes reserved until `until` (its expiry) or `release`."""
    max_processing, max_bytes = limits_for(bus.settings, tenant)
    if max_processing or max_bytes:
        await _admit(bus, tenant, RESUMABLE + upload_id, length, max_processing, max_bytes, until=until)


async def release(bus, tenant: str, upload_id: str) -> None:
    """A resumable upload became a video, was refused or terminated: free its reservation."""
    max_processing, max_bytes = limits_for(bus.settings, tenant)
    if max_processing or max_bytes:
        await _change(bus, tenant, lambda ledger: ledger.pop(RESUMABLE + upload_id, None))


async def _admit(bus, tenant, video_id, incoming, max_processing, max_bytes, until: float | None = None) -> int | None:
    kv = await bus.kv(topology.KV_ADMISSIONS)
    budget: int | None = None

    async def admit(value: bytes | None) -> bytes:
        nonlocal budget
        ledger = _live(value)
        # Fresh usage on every attempt: a lost race means another upload was admitted.
        usage: Usage = await bus.request(topology.RPC_CATALOG_USAGE, GetUsage(tenant=tenant), Usage, timeout=10)
        streaming = sum(1 for vid in ledger if not vid.startswith(RESUMABLE))
        if max_processing and usage.processing + streaming >= max_processing:
            raise QuotaExceeded(
                429,
                "quota_processing",
                f"{usage.processing} videos are processing and {streaming} uploading "
                f"(limit {max_processing} for this tenant); retry when one is done",
                {"Retry-After": str(bus.settings.retry_after_s)},
            )
        budget = None
        if max_bytes:
            stored = usage.stored_bytes + sum(reserved for _, reserved in ledger.values())
            left = max_bytes - stored
            if left <= 0 or (incoming is not None and incoming > left):
                raise QuotaExceeded(403, "quota_storage", storage_message(stored, max_bytes))
            budget = left if incoming is None else incoming
        ledger[video_id] = (until or time.time() + HOLD_S, budget or 0)
        return msgspec.json.encode(ledger)

    try:
        await kv_update(kv, tenant, admit, attempts=CAS_ATTEMPTS)
    except KvContention:
        raise QuotaExceeded(
            429,
            "quota_busy",
            "too many uploads of this tenant start at once; retry",
            {"Retry-After": str(bus.settings.retry_after_s)},
        ) from None
    return budget


async def _renew(bus, tenant: str, video_id: str) -> None:
    """Keep the admission while the upload streams (a slow client may take long)."""
    while True:
        await asyncio.sleep(HOLD_S / 3)

        def extend(ledger: dict) -> None:
            if video_id in ledger:
                ledger[video_id] = (time.time() + HOLD_S, ledger[video_id][1])

        await _change(bus, tenant, extend)


async def _change(bus, tenant: str, change) -> None:
    """Apply `change` to the tenant's ledger (compare-and-set); best effort: a failure
    leaves the entry to expire after HOLD_S."""

    def apply(value: bytes | None) -> bytes | None:
        if value is None:
            return None  # no ledger: nothing admitted is left to change
        ledger = _live(value)
        change(ledger)
        return msgspec.json.encode(ledger)

    try:
        kv = await bus.kv(topology.KV_ADMISSIONS)
        await kv_update(kv, tenant, apply, attempts=CAS_ATTEMPTS)
    except Exception:
        log.warning("could not update the admissions of %s", tenant, exc_info=True)


def _live(value: bytes | None) -> dict[str, tuple[float, int]]:
    """The live admissions of a tenant's ledger (none when it has no ledger)."""
    if value is None:
        return {}
    now = time.time()
    return {vid: held for vid, held in _ledger.decode(value).items() if held[0] > now}


def storage_message(stored: int, max_bytes: int) -> str:
    return f"{stored} bytes stored or being uploaded of this tenant's {max_bytes}; delete videos to upload more"

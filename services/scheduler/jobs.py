"""What the scheduler's schedules fire: retention, the daily usage report, the clean-up of
expired resumable uploads. (Re-drive of stuck videos is the pipeline's: services/pipeline/redrive.py.)

Each job is `async def job(bus, now) -> summary`, with `now` the tick's time (or the
`as_of` of a manual run), never the wall clock, so a test injects the clock. Jobs act
through the owners of the state: the catalog deletes videos (catalog.rpc.delete) and
lists them (catalog.rpc.list). The scheduler writes its own `scheduler` bucket and, for the
upload clean-up, the gateway's `resumable_uploads`; it reads the keys of `videos` (to know
the tenants) without writing them.

Every job is idempotent, so a redelivered tick or two overlapping runs do no harm:
deleting twice is a no-op, the usage report's msg-id is keyed by tenant and day.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from shared import topology
from shared.bus import Bus, RpcError
from shared.consumer import Retry
from shared.contracts import DeleteVideo, ListVideos, UsageReported, Video, VideoPage
from shared.declaration import kv_stream
from shared.kvscan import entries

log = logging.getLogger("vidmesh.scheduler")

DAY_S = 86400.0
PAGE = 100


# --- retention -----------------------------------------------------------------------------


def retention_days(settings, tenant: str) -> float:
    return settings.retention_days_by_tenant.get(tenant, settings.retention_days)


def expired(video: Video, now: float, days: float) -> bool:
    return days > 0 and video.created_at < now - days * DAY_S


async def retention(bus: Bus, now: float) -> dict:
    """Delete (media and state, through the catalog) every video older than its tenant's
    retention. VIDMESH_RETENTION_DAYS=0 (the default) keeps videos forever."""
    tenants = await known_tenants(bus)
    deleted = kept_tenants = 0
    for tenant in sorted(tenants):
        days = retention_days(bus.settings, tenant)
        if days <= 0:
            kept_tenants += 1
            continue
        doomed = [v.id async for v in videos_of(bus, tenant) if expired(v, now, days)]
        for video_id in doomed:
            try:
                await bus.request(topology.RPC_CATALOG_DELETE, DeleteVideo(tenant=tenant, video_id=video_id), Video)
            except RpcError as exc:
                if exc.code != "not_found":
                    raise Retry(f"catalog delete of {tenant}/{video_id}: {exc}") from None
            deleted += 1
            log.info("retention: deleted %s/%s (older than %g days)", tenant, video_id, days)
    return {"tenants": len(tenants), "tenants_kept_forever": kept_tenants, "deleted": deleted}


# --- usage report --------------------------------------------------------------------------


def report_day(now: float) -> tuple[str, float, float]:
    """The UTC day that ended last before `now`: (YYYY-MM-DD, start, end)."""
    end = math.floor(now / DAY_S) * DAY_S
    start = end - DAY_S
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d"), start, end


def usage(videos: list[Video], start: float, end: float) -> dict:
    """Counts for one tenant: stored videos and bytes now, uploads and rendition seconds of
    the period (seconds are counted for the day the video was uploaded)."""
    created = [v for v in videos if start <= v.created_at < end]
    seconds = 0.0
    for v in created:
        fallback = v.source.duration if v.source and v.source.duration else 0.0
        seconds += sum(r.duration or fallback for r in v.renditions)
    stored = sum((v.source.size if v.source else 0) + sum(r.size for r in v.renditions) for v in videos)
    return {
        "videos": len(videos),
        "videos_created": len(created),
        "seconds_transcoded": round(seconds, 3),
        "bytes_stored": stored,
    }


async def usage_report(bus: Bus, now: float) -> dict:
    """One UsageReported per tenant for the day before `now` (on the REPORTS stream)."""
    day, start, end = report_day(now)
    tenants = await known_tenants(bus)
    for tenant in sorted(tenants):
        counts = usage([v async for v in videos_of(bus, tenant)], start, end)
        report = UsageReported(
            tenant=tenant, day=day, period_start=start, period_end=end, generated_at=time.time(), **counts
        )
        await bus.publish(report, msg_id=f"usage:{tenant}:{day}", subject=topology.usage_subject(tenant, day))
    return {"day": day, "tenants": len(tenants)}


# --- reading ---------------------------------------------------------------------------------


async def known_tenants(bus: Bus) -> set[str]:
    """Every tenant with a video, from the keys (`<tenant>.<video_id>`) of `videos`."""
    return {entry.key.split(".", 1)[0] async for entry in entries(bus.js, topology.KV_VIDEOS, meta_only=True)}


async def videos_of(bus: Bus, tenant: str) -> AsyncIterator[Video]:
    """A tenant's videos (not deleted), newest first, page by page from the catalog."""
    cursor = None
    while True:
        try:
            page = await bus.request(
                topology.RPC_CATALOG_LIST, ListVideos(tenant=tenant, limit=PAGE, cursor=cursor), VideoPage
            )
        except RpcError as exc:
            raise Retry(f"catalog list for {tenant}: {exc}") from None
        for video in page.items:
            yield video
        if not page.next_cursor:
            return
        cursor = page.next_cursor


# --- expired resumable uploads -----------------------------------------------------------------


class UploadView(msgspec.Struct, frozen=True, kw_only=True):
    """The part of a resumable upload's state (the gateway's `resumable_uploads` bucket) the
    clean-up reads (other fields are ignored)."""

    id: str
    tenant: str
    nuid: str
    expires_at: float
    status: str = "uploading"
    finished_at: float | None = None
    lease: dict | None = None  # {"until": ...} while a request holds the upload


class DirectView(msgspec.Struct, frozen=True, kw_only=True):
    expires_at: float


upload_decoder = msgspec.json.Decoder(UploadView)
direct_decoder = msgspec.json.Decoder(DirectView)
UPLOAD_GRACE_S = 60.0  # past its expiry, before the clean-up touches an upload


async def upload_expiry(bus: Bus, now: float) -> dict:
    """Remove what expired among the resumable uploads:
    - an incomplete upload past its `Upload-Expires` (VIDMESH_UPLOAD_EXPIRY_S after its
      creation, or its direct-upload URL's expiry): its state, then its chunks (and the
      source object's meta, if its final request died while committing it);
    - a finished (done, refused) or terminated upload's record, VIDMESH_UPLOAD_EXPIRY_S after
      it finished (HEAD answers with its video, or 410, until then);
    - one-time direct-upload URLs past their expiry.
    The state goes first (compare-and-set on its revision): a request that still writes the
    upload then fails its own state write instead of reviving it."""
    kv = await bus.kv(topology.KV_RESUMABLE)
    summary = {"expired": 0, "forgotten": 0, "direct_expired": 0, "kept": 0}
    async for entry in entries(bus.js, topology.KV_RESUMABLE, "up.>"):
        try:
            upload = upload_decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if upload.status in ("uploading", "complete"):
            held = upload.lease is not None and float(upload.lease.get("until", 0)) > now
            if upload.expires_at + UPLOAD_GRACE_S > now or held:
                summary["kept"] += 1
                continue
            if upload.status == "complete" and await _video_exists(bus, upload):
                # announced, though its state never said so: the bytes are that video's source
                if await _delete_entry(kv, entry):
                    summary["forgotten"] += 1
                continue
            if not await _delete_entry(kv, entry):
                continue
            await bus.media.purge_chunks(upload.nuid)
            await bus.js.purge_stream(
                bus.media.stream, subject=bus.media._meta_subject(topology.source_key(upload.tenant, upload.id))
            )
            summary["expired"] += 1
            log.info("upload_expiry: removed %s/%s (expired)", upload.tenant, upload.id)
        elif (upload.finished_at or 0) + bus.settings.upload_expiry_s <= now:
            if await _delete_entry(kv, entry):
                summary["forgotten"] += 1
        else:
            summary["kept"] += 1
    async for entry in entries(bus.js, topology.KV_RESUMABLE, "du.>"):
        try:
            direct = direct_decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if direct.expires_at + UPLOAD_GRACE_S <= now and await _delete_entry(kv, entry):
            summary["direct_expired"] += 1
    return summary


async def _delete_entry(kv, entry) -> bool:
    try:
        await kv.delete(entry.key, last=entry.revision)
    except KeyWrongLastSequenceError:
        return False  # written since it was read: looked at again on the next run
    # the delete marker too: the bucket does not grow by one marker per upload ever made
    await kv._js.purge_stream(kv_stream(topology.KV_RESUMABLE), subject=f"$KV.{topology.KV_RESUMABLE}.{entry.key}")
    return True


async def _video_exists(bus: Bus, upload: UploadView) -> bool:
    from shared.contracts import GetVideo

    try:
        await bus.request(topology.RPC_CATALOG_GET, GetVideo(tenant=upload.tenant, video_id=upload.id), Video)
        return True
    except RpcError as exc:
        if exc.code == "not_found":
            return False
        raise Retry(f"catalog get of {upload.tenant}/{upload.id}: {exc}") from None

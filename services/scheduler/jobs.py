"""What the schedules fire: retention, re-drive of stuck videos, the daily usage report.

Each job is `async def job(bus, now) -> summary`, with `now` the tick's time (or the
`as_of` of a manual run), never the wall clock, so a test injects the clock. Jobs act
through the owners of the state: the catalog deletes videos (catalog.rpc.delete) and
lists them (catalog.rpc.list); a stuck video gets its lost tasks published again, or a
`TaskFailed` (code `stuck`) that the pipeline folds into a failed video, exactly as if a
worker had given up. The scheduler writes only its own `scheduler` bucket. It reads two
others without writing them: the keys of `videos` (to know the tenants) and the
pipeline's `jobs` (which tasks of a processing video are still pending).

Every job is idempotent, so a redelivered tick or two overlapping runs do no harm:
deleting twice is a no-op, re-published tasks carry msg-ids keyed by the re-drive attempt
(taken with compare-and-set), the usage report's msg-id is keyed by tenant and day.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared import topology
from shared.kvscan import entries
from shared.bus import Bus, RpcError
from shared.consumer import Retry
from shared.contracts import (
    DeleteVideo,
    ErrorInfo,
    ListVideos,
    MediaTask,
    TaskFailed,
    UsageReported,
    Video,
    VideoPage,
    VideoPlan,
    decoder,
)

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


# --- re-drive ------------------------------------------------------------------------------


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """The part of the pipeline's job record re-drive reads (other fields are ignored)."""

    video_id: str
    tenant: str
    source: str
    tasks: dict[str, str] = {}  # task -> waiting | pending | done | failed
    status: str = "processing"
    plan: VideoPlan | None = None
    chunk_segments: dict[str, list[int]] = {}
    audio_segments: list[int] = []
    audio_priming: int = 0


class RedriveState(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 0
    last_at: float = 0.0


job_decoder = msgspec.json.Decoder(JobView)
state_decoder = msgspec.json.Decoder(RedriveState)
state_encoder = msgspec.json.Encoder()
task_decoder = decoder(MediaTask)


def missing_tasks(job: JobView, queued: set[str]) -> list[str]:
    """Pending tasks with no message on their work queue (queued or in a worker's hands)."""
    return sorted(task for task, state in job.tasks.items() if state == "pending" and task not in queued)


async def redrive(bus: Bus, now: float) -> dict:
    """A video `processing` whose job has not moved for VIDMESH_STUCK_AFTER_S and has a
    pending task that is on no work queue lost that task (e.g. deleted from the stream, or
    a publish that never happened): publish it again. After VIDMESH_REDRIVE_MAX_ATTEMPTS
    re-drives, fail the video with `stuck` instead.

    A task waiting in a long queue or held by a slow worker is still in its work-queue
    stream (a work queue drops a message only when it is acknowledged), so it is never
    mistaken for lost."""
    settings = bus.settings
    state_kv = await bus.kv(topology.KV_SCHEDULER)
    summary = {"processing": 0, "stuck": 0, "republished": 0, "failed": 0}
    processing: set[str] = set()
    async for entry in entries(bus.js, topology.KV_JOBS):
        try:
            job = job_decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if job.status != "processing":
            continue
        key = topology.state_key(job.tenant, job.video_id)
        processing.add(key)
        summary["processing"] += 1
        changed_at = entry.created.timestamp()
        if now - changed_at < settings.stuck_after_s:
            continue
        missing = missing_tasks(job, await queued_tasks(bus, job))
        if not missing:
            continue
        summary["stuck"] += 1
        attempt = await _take_attempt(state_kv, key, now, settings.stuck_after_s)
        if attempt is None:
            continue  # re-driven recently (or by an overlapping run): give it time
        if attempt > settings.redrive_max_attempts:
            error = ErrorInfo(
                code="stuck",
                message=f"{missing[0]}: no progress for {settings.stuck_after_s:g}s after "
                f"{settings.redrive_max_attempts} re-drives",
            )
            failed = TaskFailed(video_id=job.video_id, tenant=job.tenant, task=missing[0], error=error)
            await bus.publish(failed, msg_id=f"{job.video_id}:{missing[0]}:stuck")
            summary["failed"] += 1
            log.warning("re-drive: %s/%s is stuck on %s: failed", job.tenant, job.video_id, missing)
            continue
        for task in missing:
            msg = _task_message(job, task)
            if msg is not None:
                await bus.publish(msg, msg_id=f"{job.video_id}:{task}:redrive{attempt}")
                summary["republished"] += 1
        log.warning("re-drive %d of %s/%s: published %s again", attempt, job.tenant, job.video_id, missing)
    await _forget_finished(bus, state_kv, processing)
    return summary


async def queued_tasks(bus: Bus, job: JobView) -> set[str]:
    """The tasks of `job` that have a message on their work queue."""
    found: set[str] = set()
    for stream in topology.MEDIA_TASK_STREAMS:
        subject = f"*.cmd.*.{job.tenant}.{job.video_id}"
        seq = 1
        while True:
            try:
                msg = await bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            try:
                found.add(task_decoder.decode(msg.data).task)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
            seq = msg.seq + 1
    return found


def _task_message(job: JobView, task: str):
    if job.plan is None:
        log.warning("re-drive: %s has no plan: cannot publish %r", job.video_id, task)
        return None
    segments = sorted({i for indices in job.chunk_segments.values() for i in indices})
    try:
        return job.plan.task_message(
            task,
            video_id=job.video_id,
            tenant=job.tenant,
            source=job.source,
            segments=segments,
            audio_segments=job.audio_segments,
            audio_priming=job.audio_priming,
        )
    except ValueError:
        log.warning("re-drive: do not know how to publish task %r of %s", task, job.video_id)
        return None


async def _take_attempt(kv, key: str, now: float, min_gap_s: float) -> int | None:
    """The next re-drive attempt number for a video (compare-and-set), or None when it was
    re-driven less than `min_gap_s` ago or another run took this attempt."""
    state_key = f"redrive.{key}"
    try:
        entry = await kv.get(state_key)
        state = state_decoder.decode(entry.value)
    except KeyNotFoundError:
        entry, state = None, RedriveState()
    if state.attempts and now - state.last_at < min_gap_s:
        return None
    new = RedriveState(attempts=state.attempts + 1, last_at=now)
    try:
        if entry is None:
            await kv.create(state_key, state_encoder.encode(new))
        else:
            await kv.update(state_key, state_encoder.encode(new), last=entry.revision)
    except KeyWrongLastSequenceError:
        return None
    return new.attempts


async def _forget_finished(bus: Bus, kv, processing: set[str]) -> None:
    async for entry in entries(bus.js, topology.KV_SCHEDULER, "redrive.>", meta_only=True):
        if entry.key[len("redrive.") :] not in processing:
            try:
                await kv.delete(entry.key)
            except Exception:
                pass  # best effort: it is retried on the next run


# --- usage report --------------------------------------------------------------------------


def report_day(now: float) -> tuple[str, float, float]:
    """The UTC day that ended last before `now`: (YYYY-MM-DD, start, end)."""
    end = math.floor(now / DAY_S) * DAY_S
    start = end - DAY_S
    return datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d"), start, end


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
            await bus.js.purge_stream(bus.media.stream, subject=bus.media._meta_subject(
                topology.source_key(upload.tenant, upload.id)))
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
    await kv._js.purge_stream(f"KV_{topology.KV_RESUMABLE}", subject=f"$KV.{topology.KV_RESUMABLE}.{entry.key}")
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

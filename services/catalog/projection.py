"""The catalog's projection: video events folded into one record per video (pure logic).

`apply` is idempotent (the same event twice gives the same record) and tolerates events
arriving out of order for one video: a record can be started by any event, the upload
fills in what it knows later, and terminal states are never undone by a late event.
"""

from __future__ import annotations

import msgspec

from shared.contracts import (
    ErrorInfo,
    Rendition,
    RenditionProgress,
    RenditionSpec,
    RenditionTranscoded,
    SourceInfo,
    TaskFailed,
    Thumbnail,
    ThumbnailExtracted,
    Video,
    VideoDeleted,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoUploaded,
)

TERMINAL = ("ready", "failed", "deleted")


class Incomplete(Exception):
    """`video_ready` arrived before the results it stands for (one is out for redelivery):
    applying it now would show a ready video whose rendition downloads 404."""


class StoredRendition(msgspec.Struct, frozen=True, kw_only=True):
    width: int
    height: int
    object: str
    size: int = 0
    duration: float | None = None
    has_audio: bool = False


class StoredThumbnail(msgspec.Struct, frozen=True, kw_only=True):
    object: str
    width: int
    height: int
    size: int = 0


class VideoRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the catalog keeps per video in its KV bucket (its own storage format)."""

    id: str
    tenant: str
    status: str = "processing"
    created_at: float = 0.0
    updated_at: float = 0.0
    uploaded: bool = False  # the upload event has been applied
    source: SourceInfo | None = None
    source_object: str | None = None
    filename: str | None = None
    planned: list[RenditionSpec] = []
    renditions: dict[str, StoredRendition] = {}
    progress: dict[str, float] = {}
    thumbnail: StoredThumbnail | None = None
    error: ErrorInfo | None = None

    def stored_bytes(self) -> int:
        """What this video keeps in the object store (for storage quotas)."""
        if self.status == "deleted":
            return 0
        total = self.source.size if self.source else 0
        total += sum(r.size for r in self.renditions.values())
        return total + (self.thumbnail.size if self.thumbnail else 0)

    def objects(self) -> list[str]:
        """Every media object of this video, for deletion."""
        names = [r.object for r in self.renditions.values()]
        if self.source_object:
            names.append(self.source_object)
        if self.thumbnail:
            names.append(self.thumbnail.object)
        return names


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(VideoRecord)


def apply(record: VideoRecord | None, event, now: float) -> VideoRecord | None:
    """The record after `event`, or None when the event changes nothing."""
    base = record or VideoRecord(id=event.video_id, tenant=event.tenant, created_at=now, updated_at=now)
    new = _fold(base, event)
    if record is not None and new == record:
        return None
    return msgspec.structs.replace(new, updated_at=now)


def _fold(r: VideoRecord, e) -> VideoRecord:
    replace = msgspec.structs.replace
    if isinstance(e, VideoDeleted):
        return replace(r, status="deleted", progress={})
    if r.status == "deleted":
        return r
    if isinstance(e, VideoUploaded):
        if r.uploaded:
            return r
        return replace(
            r, uploaded=True, created_at=e.created_at, source=e.source, source_object=e.object, filename=e.filename
        )
    if isinstance(e, VideoPlanned):
        return replace(r, planned=list(e.renditions))
    if isinstance(e, RenditionProgress):
        if r.status in TERMINAL or e.rendition in r.renditions:
            return r
        if e.percent <= r.progress.get(e.rendition, -1):
            return r
        return replace(r, progress={**r.progress, e.rendition: round(e.percent, 1)})
    if isinstance(e, RenditionTranscoded):
        done = StoredRendition(
            width=e.width, height=e.height, object=e.object, size=e.size, duration=e.duration, has_audio=e.has_audio
        )
        return replace(r, renditions={**r.renditions, e.rendition: done}, progress={**r.progress, e.rendition: 100.0})
    if isinstance(e, ThumbnailExtracted):
        return replace(r, thumbnail=StoredThumbnail(object=e.object, width=e.width, height=e.height, size=e.size))
    if isinstance(e, VideoReady):
        missing = [spec.name for spec in r.planned if spec.name not in r.renditions]
        if r.status not in ("ready", "deleted") and (not r.planned or missing or r.thumbnail is None):
            raise Incomplete(f"ready before {', '.join(missing) or 'its plan or thumbnail'}")
        # failed -> ready happens when a dead-lettered task is replayed and succeeds; the
        # pipeline never announces ready and then failed, so no fact is undone here.
        return r if r.status in ("ready", "deleted") else replace(r, status="ready", error=None)
    if isinstance(e, VideoFailed):
        return r if r.status in TERMINAL else replace(r, status="failed", error=e.error)
    if isinstance(e, TaskFailed):
        return r  # the pipeline decides what a failed task means for the video
    return r


def to_view(r: VideoRecord) -> Video:
    """The public JSON of a video; media URLs are relative to the gateway."""
    base = f"/v1/videos/{r.id}"
    deleted = r.status == "deleted"
    order = [spec.name for spec in r.planned] or sorted(r.renditions, key=lambda n: -r.renditions[n].height)
    renditions = []
    if not deleted:
        for name in order:
            done = r.renditions.get(name)
            if done:
                renditions.append(
                    Rendition(
                        name=name,
                        width=done.width,
                        height=done.height,
                        url=f"{base}/renditions/{name}",
                        size=done.size,
                        duration=done.duration,
                        has_audio=done.has_audio,
                    )
                )
    thumb = None
    if r.thumbnail and not deleted:
        thumb = Thumbnail(url=f"{base}/thumbnail", width=r.thumbnail.width, height=r.thumbnail.height)
    return Video(
        id=r.id,
        status=r.status,
        created_at=r.created_at,
        updated_at=r.updated_at,
        source=r.source,
        renditions=renditions,
        planned=[spec.name for spec in r.planned],
        progress={} if r.status in TERMINAL else dict(r.progress),
        thumbnail=thumb,
        error=r.error,
        filename=r.filename,
    )

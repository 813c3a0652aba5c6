"""Message contracts: everything that crosses a process boundary on the bus.

Rules (see the design guide): frozen, kw_only msgspec Structs with explicit versioned tags;
new fields get defaults; unknown fields are ignored so older consumers read newer messages.
Commands are imperative, events past tense. Encoders/decoders are created once, below.
"""

from __future__ import annotations

from typing import Union

import msgspec


class Contract(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every bus message; the tag travels in the `type` field."""


# --- value objects carried inside messages -------------------------------------------------


class SourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the probe learned about an upload. width/height are as displayed."""

    size: int
    container: str | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    # Degrees clockwise to turn decoded frames so they display upright (0, 90, 180, 270).
    rotation: int = 0


class RenditionSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # "720p"
    width: int
    height: int


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


# --- events (facts, on the events stream) ----------------------------------------------------


class VideoUploaded(Contract, tag="gateway.video_uploaded.v1"):
    video_id: str
    tenant: str
    object: str
    created_at: float
    source: SourceInfo
    filename: str | None = None
    content_type: str | None = None


class VideoPlanned(Contract, tag="pipeline.video_planned.v1"):
    video_id: str
    tenant: str
    renditions: list[RenditionSpec]
    thumbnail: bool = True


class RenditionProgress(Contract, tag="transcoder.rendition_progress.v1"):
    video_id: str
    tenant: str
    rendition: str
    percent: float


class RenditionTranscoded(Contract, tag="transcoder.rendition_transcoded.v1"):
    video_id: str
    tenant: str
    rendition: str
    object: str
    width: int
    height: int
    size: int
    duration: float | None = None
    has_audio: bool = False


class ThumbnailExtracted(Contract, tag="thumbnailer.thumbnail_extracted.v1"):
    video_id: str
    tenant: str
    object: str
    width: int
    height: int
    size: int = 0


class TaskFailed(Contract, tag="worker.task_failed.v1"):
    video_id: str
    tenant: str
    task: str  # "transcode:720p" or "thumbnail"
    error: ErrorInfo


class VideoReady(Contract, tag="pipeline.video_ready.v1"):
    video_id: str
    tenant: str


class VideoFailed(Contract, tag="pipeline.video_failed.v1"):
    video_id: str
    tenant: str
    error: ErrorInfo


class VideoDeleted(Contract, tag="catalog.video_deleted.v1"):
    video_id: str
    tenant: str


Event = Union[
    VideoUploaded,
    VideoPlanned,
    RenditionProgress,
    RenditionTranscoded,
    ThumbnailExtracted,
    TaskFailed,
    VideoReady,
    VideoFailed,
    VideoDeleted,
]

# --- commands (tasks, on work-queue streams) -------------------------------------------------


class TranscodeRendition(Contract, tag="transcoder.transcode_rendition.v1"):
    video_id: str
    tenant: str
    source: str  # object key of the upload
    rendition: RenditionSpec
    duration: float | None = None
    rotation: int = 0


class ExtractThumbnail(Contract, tag="thumbnailer.extract_thumbnail.v1"):
    video_id: str
    tenant: str
    source: str
    max_width: int = 640


# --- request-reply ---------------------------------------------------------------------------


class GetVideo(Contract, tag="catalog.get_video.v1"):
    tenant: str
    video_id: str


class ListVideos(Contract, tag="catalog.list_videos.v1"):
    tenant: str
    limit: int = 20
    cursor: str | None = None


class DeleteVideo(Contract, tag="catalog.delete_video.v1"):
    tenant: str
    video_id: str


class ProbeSource(Contract, tag="pipeline.probe_source.v1"):
    tenant: str
    video_id: str
    object: str


class Rendition(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    width: int
    height: int
    url: str
    size: int = 0
    duration: float | None = None
    has_audio: bool = False


class Thumbnail(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    width: int
    height: int


class Video(msgspec.Struct, frozen=True, kw_only=True):
    """The public view of a video: what GET /v1/videos/{id} answers."""

    id: str
    status: str  # processing | ready | failed | deleted
    created_at: float
    updated_at: float
    source: SourceInfo | None = None
    renditions: list[Rendition] = []
    planned: list[str] = []
    progress: dict[str, float] = {}
    thumbnail: Thumbnail | None = None
    error: ErrorInfo | None = None
    filename: str | None = None


class VideoPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Video]
    next_cursor: str | None = None


class Probed(msgspec.Struct, frozen=True, kw_only=True):
    source: SourceInfo | None = None
    error: ErrorInfo | None = None


# One encoder and one decoder per union, created once.
encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)


def encode(msg: msgspec.Struct) -> bytes:
    return encoder.encode(msg)


_decoders: dict[type, msgspec.json.Decoder] = {}


def decoder(kind) -> msgspec.json.Decoder:
    """The cached decoder of a message type (or union of them)."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec

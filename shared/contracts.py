"""Message contracts: everything that crosses a process boundary on the bus.

Rules: frozen, kw_only msgspec Structs with explicit versioned tags;
new fields get defaults; unknown fields are ignored so older consumers read newer messages.
Commands are imperative, events past tense. Encoders/decoders are created once, below.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec


class Contract(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every bus message; the tag travels in the `type` field.

    Each message says `frozen=True` again: msgspec inherits it, but type checkers read it
    from the class's own keywords only, and would take a message for a mutable dataclass."""


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
    # The timeline can be cut into chunks: a seek index and ordered timestamps. When False
    # the video is encoded as one chunk.
    cuttable: bool = False
    video_duration: float | None = None  # where the video stream ends (seconds), when known


class RenditionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One rung of the ladder: its size and its x264 rate control (capped CRF)."""

    name: str  # "720p"
    width: int
    height: int
    crf: int = 23
    maxrate_kbps: int = 0  # VBV cap in kb/s; 0: uncapped CRF
    bufsize_kbit: int = 0  # VBV buffer in kbit
    profile: str = "high"  # H.264 profile
    level: str = ""  # H.264 level, e.g. "4.2"; "": x264 picks


class ChunkSpan(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk of a video's timeline: frames with start <= t < end (seconds on the source
    timeline shifted to start at 0). The last chunk has no end: it takes every frame left."""

    index: int
    start: float
    end: float | None = None
    first_segment: int = 0  # the index of the segment that opens at `start`


class VideoPlan(msgspec.Struct, frozen=True, kw_only=True):
    """How the pipeline cut one video: the chunks every rung is encoded in, and the segment
    grid their keyframes and fragments follow."""

    renditions: list[RenditionSpec]
    segment_s: float  # segment duration (seconds); chunk starts are multiples of it
    chunks: list[ChunkSpan]
    audio: bool = False  # the source has an audio track: one audio task
    rotation: int = 0
    duration: float | None = None  # seconds, from the probe
    segments: int = 0  # segments expected from the duration (the stored count may differ by one)

    def task_names(self) -> list[str]:
        """Every task of the video, in publishing order (the stitch comes last, when the
        chunks and the audio are in)."""
        names = [chunk_task(c.index) for c in self.chunks]
        if self.audio:
            names.insert(1, AUDIO_TASK)
        return [*names, THUMBNAIL_TASK, STITCH_TASK]

    def task_message(
        self,
        name: str,
        *,
        video_id: str,
        tenant: str,
        source: str,
        segments: list[int] | None = None,
        audio_segments: list[int] | None = None,
        audio_priming: int = 0,
    ) -> MediaTask:
        """The message of task `name` of this plan (an EncodeChunk, EncodeAudio,
        ExtractThumbnail or StitchRenditions); the stitch needs the stored segments.
        Raises ValueError for a name the plan does not have."""
        if name == THUMBNAIL_TASK:
            return ExtractThumbnail(video_id=video_id, tenant=tenant, source=source)
        if name == AUDIO_TASK and self.audio:
            return EncodeAudio(
                video_id=video_id, tenant=tenant, source=source, segment_s=self.segment_s, duration=self.duration
            )
        if name == STITCH_TASK:
            return StitchRenditions(
                video_id=video_id,
                tenant=tenant,
                renditions=self.renditions,
                segments=list(segments or []),
                audio_segments=list(audio_segments or []),
                audio_priming=audio_priming,
            )
        index = chunk_index(name)
        if index is not None:
            if index < len(self.chunks):
                return EncodeChunk(
                    video_id=video_id,
                    tenant=tenant,
                    source=source,
                    chunk=self.chunks[index],
                    renditions=self.renditions,
                    segment_s=self.segment_s,
                    rotation=self.rotation,
                    duration=self.duration,
                )
        raise ValueError(f"the plan has no task {name!r}")


class SegmentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One segment as stored: its index in the video, where it starts on the output timeline
    and how long it lasts (seconds; EXTINF), and the bytes of its fragment per rendition."""

    index: int
    start: float
    duration: float
    sizes: dict[str, int] = {}  # rendition name (or "audio") -> bytes


# Task names, as in TaskFailed.task and the pipeline's job: "chunk:<index>", "audio",
# "thumbnail", "stitch". They are spelled only here: a task message gives its own name
# (`.task`, on each MediaTask below), and the names are built and read back with
# `chunk_task` / `chunk_index`.
AUDIO_TASK = "audio"
THUMBNAIL_TASK = "thumbnail"
STITCH_TASK = "stitch"
CHUNK_TASK_PREFIX = "chunk:"


def chunk_task(index: int) -> str:
    """The name of the task encoding chunk `index`."""
    return f"{CHUNK_TASK_PREFIX}{index}"


def chunk_index(task: str) -> int | None:
    """The chunk index of a chunk task's name; None for any other task."""
    digits = task[len(CHUNK_TASK_PREFIX) :]
    return int(digits) if task.startswith(CHUNK_TASK_PREFIX) and digits.isdigit() else None


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class WarningInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Something a viewer may notice that did not stop the video: `damaged_packets`
    (undecodable packets were skipped), `truncated` (the media ends before the duration its
    file declares). `message` starts with the task that saw it (`chunk:<i>`, `audio`)."""

    code: str
    message: str


# --- events (facts, on the events stream) ----------------------------------------------------


class VideoUploaded(Contract, frozen=True, tag="gateway.video_uploaded.v1"):
    video_id: str
    tenant: str
    object: str
    created_at: float
    source: SourceInfo
    filename: str | None = None
    content_type: str | None = None


class VideoPlanned(Contract, frozen=True, tag="pipeline.video_planned.v1"):
    video_id: str
    tenant: str
    renditions: list[RenditionSpec]
    thumbnail: bool = True
    chunks: int = 0  # chunk tasks (each encodes every rendition of its part of the timeline)
    segments: int = 0  # segments expected per rendition (progress is the share stored)
    segment_s: float = 0.0
    audio: bool = False


class ChunkProgress(Contract, frozen=True, tag="transcoder.chunk_progress.v1"):
    """A chunk task finished `segments` segments (of every rendition) so far; sent at most
    about once a second while a chunk of several segments encodes."""

    video_id: str
    tenant: str
    chunk: int
    segments: int


class ChunkEncoded(Contract, frozen=True, tag="transcoder.chunk_encoded.v1"):
    """Every rendition of one chunk is stored as CMAF fragments, one per segment, under
    topology.segment_key; the init segments under topology.init_key (written by chunk 0;
    `inits` lets the pipeline check that every chunk produced the same ones)."""

    video_id: str
    tenant: str
    chunk: int
    segments: list[SegmentInfo]
    inits: dict[str, str] = {}  # rendition -> SHA-256 (hex) of its init segment
    codecs: dict[str, str] = {}  # rendition -> RFC 6381 codec, e.g. "avc1.64001f"
    warnings: list[WarningInfo] = []


class AudioEncoded(Contract, frozen=True, tag="transcoder.audio_encoded.v1"):
    """The whole audio track is stored as CMAF fragments on the same segment grid as the video
    (AAC-LC; each fragment starts with the first AAC frame at or after the segment's start)."""

    video_id: str
    tenant: str
    segments: list[SegmentInfo]
    codec: str = "mp4a.40.2"
    priming: int = 0  # samples (48 kHz) of encoder delay at the start of the track
    warnings: list[WarningInfo] = []


class RenditionStitched(Contract, frozen=True, tag="transcoder.rendition_stitched.v1"):
    """One rendition's fragments and the audio remuxed (stream copy) into a faststart MP4."""

    video_id: str
    tenant: str
    rendition: str
    object: str
    width: int
    height: int
    size: int
    duration: float | None = None
    has_audio: bool = False


class ThumbnailExtracted(Contract, frozen=True, tag="thumbnailer.thumbnail_extracted.v1"):
    video_id: str
    tenant: str
    object: str
    width: int
    height: int
    size: int = 0


class TaskFailed(Contract, frozen=True, tag="worker.task_failed.v1"):
    video_id: str
    tenant: str
    task: str  # the failed task message's `.task` (see the task names above)
    error: ErrorInfo


class VideoPlayable(Contract, frozen=True, tag="pipeline.video_playable.v1"):
    """The first segment of every rendition and the audio are stored: HLS can play from the
    start while the rest is encoded."""

    video_id: str
    tenant: str


class VideoReady(Contract, frozen=True, tag="pipeline.video_ready.v1"):
    video_id: str
    tenant: str
    warnings: list[WarningInfo] = []  # every task's, in task order


class VideoFailed(Contract, frozen=True, tag="pipeline.video_failed.v1"):
    video_id: str
    tenant: str
    error: ErrorInfo


class VideoDeleted(Contract, frozen=True, tag="catalog.video_deleted.v1"):
    video_id: str
    tenant: str


Event = (
    VideoUploaded
    | VideoPlanned
    | ChunkProgress
    | ChunkEncoded
    | AudioEncoded
    | RenditionStitched
    | ThumbnailExtracted
    | TaskFailed
    | VideoPlayable
    | VideoReady
    | VideoFailed
    | VideoDeleted
)

# --- commands (tasks, on work-queue streams) -------------------------------------------------


class EncodeChunk(Contract, frozen=True, tag="transcoder.encode_chunk.v1"):
    """Decode one chunk of the source once and encode every rendition of it into CMAF
    fragments, with an IDR frame at every segment boundary."""

    video_id: str
    tenant: str
    source: str  # object key of the upload
    chunk: ChunkSpan
    renditions: list[RenditionSpec]
    segment_s: float
    rotation: int = 0
    duration: float | None = None  # seconds, of the whole source

    @property
    def task(self) -> str:
        return chunk_task(self.chunk.index)


class EncodeAudio(Contract, frozen=True, tag="transcoder.encode_audio.v1"):
    """Encode the whole audio track once (AAC-LC, 48 kHz stereo) into CMAF fragments on the
    video's segment grid."""

    video_id: str
    tenant: str
    source: str
    segment_s: float
    bitrate_kbps: int = 128
    duration: float | None = None

    @property
    def task(self) -> str:
        return AUDIO_TASK


class StitchRenditions(Contract, frozen=True, tag="transcoder.stitch_renditions.v1"):
    """Remux (stream copy) each rendition's stored fragments, with the audio's, into one
    faststart MP4 at topology.rendition_key."""

    video_id: str
    tenant: str
    renditions: list[RenditionSpec]
    segments: list[int]  # video segment indices, in order
    audio_segments: list[int] = []  # empty: no audio
    audio_priming: int = 0  # samples (48 kHz) of encoder delay the MP4's edit list hides

    @property
    def task(self) -> str:
        return STITCH_TASK


class ExtractThumbnail(Contract, frozen=True, tag="thumbnailer.extract_thumbnail.v1"):
    video_id: str
    tenant: str
    source: str
    max_width: int = 640

    @property
    def task(self) -> str:
        return THUMBNAIL_TASK


MediaTask = EncodeChunk | EncodeAudio | StitchRenditions | ExtractThumbnail


# --- request-reply ---------------------------------------------------------------------------


class GetVideo(Contract, frozen=True, tag="catalog.get_video.v1"):
    tenant: str
    video_id: str
    # The EVENTS stream sequence of a write the caller made (Bus.publish returns it): the
    # catalog answers once its record of the video holds that event or a later one (exact
    # while a video's events are applied in stream order, as the catalog applies them in
    # each process), or answers `not_yet` after a few seconds. 0: answer with what it has now.
    after_seq: int = 0


class ListVideos(Contract, frozen=True, tag="catalog.list_videos.v1"):
    tenant: str
    limit: int = 20
    cursor: str | None = None


class DeleteVideo(Contract, frozen=True, tag="catalog.delete_video.v1"):
    tenant: str
    video_id: str


class ProbeSource(Contract, frozen=True, tag="pipeline.probe_source.v1"):
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


class Playback(msgspec.Struct, frozen=True, kw_only=True):
    """Where to play a video (relative to the gateway)."""

    hls: str  # the HLS master playlist


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
    playable: bool = False  # HLS plays from the start (while processing: what is encoded so far)
    playback: Playback | None = None
    warnings: list[WarningInfo] = []  # the video is usable, but: damaged packets skipped, media ending early


class GetPlaylist(Contract, frozen=True, tag="catalog.get_playlist.v1"):
    tenant: str
    video_id: str
    after_seq: int = 0  # as GetVideo's


class PlaylistRendition(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    width: int
    height: int
    codec: str  # RFC 6381


class Playlist(msgspec.Struct, frozen=True, kw_only=True):
    """What HLS playlists of a video are made of: the renditions, and the segments stored so
    far in timeline order with no gap (every rendition has each of them)."""

    status: str
    renditions: list[PlaylistRendition] = []
    segments: list[SegmentInfo] = []  # sizes: rendition -> bytes
    audio_segments: list[SegmentInfo] = []  # sizes: {"audio": bytes}
    audio_codec: str | None = None  # None: a silent video
    frame_rate: float | None = None
    playable: bool = False


class VideoPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Video]
    next_cursor: str | None = None


class Probed(msgspec.Struct, frozen=True, kw_only=True):
    source: SourceInfo | None = None
    error: ErrorInfo | None = None


class MaxDeliveriesAdvisory(msgspec.Struct, frozen=True, kw_only=True):
    """nats-server's io.nats.jetstream.advisory.v1.max_deliver (only the fields we use)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


# =============================================================================================
# Scheduled jobs and webhooks: the scheduler's ticks and usage reports, the
# notifier's delivery tasks, and the gateway <-> notifier request-reply for /v1/webhooks.
# =============================================================================================


class ScheduleTick(Contract, frozen=True, tag="scheduler.schedule_tick.v1"):
    """The body of a server-side schedule: the server copies it, unchanged, into every tick.
    `vidmesh schedules run NAME` sends one by hand (manual=True)."""

    name: str
    as_of: float | None = None  # run as if at this time (unix s); None: when the tick fired
    manual: bool = False


# The run records the services handling ticks keep in their buckets (`run.<name>`), which
# `vidmesh schedules` reads.


class ScheduleRun(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a scheduled job, as its tick started it."""

    name: str
    seq: int  # the tick's stream sequence
    fired_at: float  # unix s
    as_of: float  # unix s: the `now` the job ran with
    started_at: float  # unix s
    manual: bool = False
    next_at: str | None = None  # Nats-Schedule-Next of the tick: when the server fires again


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    seq: int  # the tick's stream sequence
    outcome: str  # ok | error
    finished_at: float  # unix s
    summary: dict[str, str | int | float] = {}
    error: str | None = None


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The last run of a schedule, and the results of the last ticks (`run --wait` finds
    its own there, even when a scheduled run of the same job finished in between)."""

    name: str
    runs: int = 0
    last: ScheduleRun | None = None
    outcome: str | None = None  # ok | error
    error: str | None = None
    finished_at: float | None = None  # unix s
    summary: dict[str, str | int | float] = {}
    recent: list[RunResult] = []

    def result(self, seq: int) -> RunResult | None:
        return next((r for r in reversed(self.recent) if r.seq == seq), None)


class UsageReported(Contract, frozen=True, tag="scheduler.usage_reported.v1"):
    """One tenant's usage for one UTC day (published once a day, on the REPORTS stream)."""

    tenant: str
    day: str  # YYYY-MM-DD, UTC
    period_start: float
    period_end: float
    videos: int  # videos stored (not deleted) when the report was made
    videos_created: int = 0  # uploaded during the day
    seconds_transcoded: float = 0.0  # rendition seconds produced for the day's uploads
    bytes_stored: int = 0  # sources and renditions of the stored videos
    generated_at: float = 0.0


class DeliverWebhook(Contract, frozen=True, tag="notifier.deliver_webhook.v1"):
    """One event to one webhook; retried through JetStream (nak with a growing delay)."""

    tenant: str
    video_id: str
    webhook_id: str
    delivery_id: str
    event_id: str
    event_type: str  # video.ready | video.failed | video.deleted
    body: str  # the exact JSON sent and signed on every attempt


WEBHOOK_EVENT_TYPES = ("video.ready", "video.failed", "video.deleted")


class CreateWebhook(Contract, frozen=True, tag="notifier.create_webhook.v1"):
    tenant: str
    url: str
    events: list[str] = []  # empty: every type in WEBHOOK_EVENT_TYPES
    description: str | None = None


class ListWebhooks(Contract, frozen=True, tag="notifier.list_webhooks.v1"):
    tenant: str


class GetWebhook(Contract, frozen=True, tag="notifier.get_webhook.v1"):
    tenant: str
    webhook_id: str


class DeleteWebhook(Contract, frozen=True, tag="notifier.delete_webhook.v1"):
    tenant: str
    webhook_id: str


class ListDeliveries(Contract, frozen=True, tag="notifier.list_deliveries.v1"):
    tenant: str
    webhook_id: str
    limit: int = 50


class Webhook(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The public view of a webhook. `secret` is only in the reply to its creation."""

    id: str
    url: str
    events: list[str]
    created_at: float
    description: str | None = None
    secret: str | None = None


class WebhookPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Webhook]


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    at: float
    status_code: int | None = None  # None: no HTTP answer (refused, timeout, connection error)
    error: str | None = None
    duration_ms: float = 0.0


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event's delivery to one webhook, with every attempt (GET .../deliveries)."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    video_id: str
    status: str  # pending | retrying | succeeded | dead | cancelled
    created_at: float
    updated_at: float
    attempts: list[DeliveryAttempt] = []
    next_attempt_at: float | None = None


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[WebhookDelivery]


# One encoder and one decoder per union, created once.
encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)


def encode(msg: msgspec.Struct) -> bytes:
    return encoder.encode(msg)


_decoders: dict[object, msgspec.json.Decoder[Any]] = {}
T = TypeVar("T")


@overload
def decoder(kind: type[T]) -> msgspec.json.Decoder[T]: ...
@overload
def decoder(kind: object) -> msgspec.json.Decoder[Any]: ...  # a union (Event, MediaTask)
def decoder(kind: object) -> msgspec.json.Decoder[Any]:
    """The cached decoder of a message type (or union of them)."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


# --- logs, metrics and alerts as events ------------------------------------------


class LogRecord(Contract, frozen=True, tag="ops.log_record.v1"):
    service: str
    instance: str
    time: float
    level: str
    logger: str
    message: str
    trace_id: str | None = None


class MetricSample(Contract, frozen=True, tag="ops.metric_sample.v1"):
    """A service's counters at one instant; the monitor works on differences between samples."""

    service: str
    instance: str
    time: float
    # consumer -> outcome -> count since the process started (ok, retried, poison, exhausted)
    messages: dict[str, dict[str, float]] = {}
    dead_letters: float = 0.0
    errors_logged: float = 0.0


OpsEvent = LogRecord | MetricSample


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    rule: str  # task_failure_rate | consumer_lag | dead_letters | service_silent
    subject: str  # what it is about: a consumer, a service, the dead-letter stream
    severity: str
    message: str
    since: float
    value: float = 0.0


class AlertChanged(Contract, frozen=True, tag="monitor.alert_changed.v1"):
    alert: Alert
    state: str  # firing | resolved


class LoadState(msgspec.Struct, frozen=True, kw_only=True):
    backlog: int
    max_backlog: int
    overloaded: bool
    updated_at: float


class GetAlerts(Contract, frozen=True, tag="monitor.get_alerts.v1"):
    pass


class AlertList(msgspec.Struct, frozen=True, kw_only=True):
    alerts: list[Alert]
    load: LoadState | None = None


# --- quotas: the gateway asks the catalog for a tenant's usage ----------------------


class GetUsage(Contract, frozen=True, tag="catalog.get_usage.v1"):
    tenant: str


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's usage as the catalog knows it: videos still processing, and bytes stored
    (sources, renditions and thumbnails of every video not deleted)."""

    tenant: str
    processing: int = 0
    stored_bytes: int = 0
    videos: int = 0

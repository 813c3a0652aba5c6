"""The catalog's projection: video events folded into one record per video (pure logic).

`apply` is idempotent (the same event twice gives the same record) and tolerates events
arriving out of order for one video: a record can be started by any event, the upload
fills in what it knows later, and terminal states are never undone by a late event.
"""

from __future__ import annotations

import msgspec

from shared import contracts, topology

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


class StoredSegment(msgspec.Struct, frozen=True, kw_only=True):
    """One segment of every rendition (or of the audio): seconds on the output timeline, and
    its fragment's bytes per rendition."""

    start: float
    duration: float
    sizes: dict[str, int] = {}
    chunk: int = -1  # the chunk task that stored it (-1: the audio)


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
    source: contracts.SourceInfo | None = None
    source_object: str | None = None
    filename: str | None = None
    planned: list[contracts.RenditionSpec] = []
    renditions: dict[str, StoredRendition] = {}
    progress: dict[str, float] = {}
    thumbnail: StoredThumbnail | None = None
    error: contracts.ErrorInfo | None = None
    segment_s: float = 0.0
    segments_planned: int = 0
    chunks_planned: int = 0
    chunk_progress: dict[str, int] = {}  # chunk index -> segments encoded so far
    chunks_done: list[int] = []
    segments: dict[str, StoredSegment] = {}  # segment index -> the segment of every rendition
    audio_segments: dict[str, StoredSegment] = {}
    codecs: dict[str, str] = {}  # rendition (or "audio") -> RFC 6381 codec
    playable: bool = False
    warnings: list[contracts.WarningInfo] = []  # as tasks report them; the ready event's list once ready
    # The EVENTS stream sequence of the latest event folded in (0: none known), so that any
    # catalog replica can tell whether a caller's write is in: see `holds`.
    seq: int = 0

    def holds(self, seq: int) -> bool:
        """This record has folded in the event at stream sequence `seq`, or a later one of
        this video."""
        return self.seq >= seq

    def stored_bytes(self) -> int:
        """What this video keeps in the object store (for storage quotas): the source, the
        MP4 renditions, the thumbnail and the CMAF fragments."""
        if self.status == "deleted":
            return 0
        total = self.source.size if self.source else 0
        total += sum(r.size for r in self.renditions.values())
        total += sum(sum(seg.sizes.values()) for seg in (*self.segments.values(), *self.audio_segments.values()))
        return total + (self.thumbnail.size if self.thumbnail else 0)

    def objects(self) -> list[str]:
        """Every media object of this video, for deletion."""
        names = [r.object for r in self.renditions.values()]
        if self.source_object:
            names.append(self.source_object)
        if self.thumbnail:
            names.append(self.thumbnail.object)
        tracks = {name for seg in self.segments.values() for name in seg.sizes} | {spec.name for spec in self.planned}
        for track, segments in [(t, self.segments) for t in sorted(tracks)] + [
            (topology.AUDIO_TRACK, self.audio_segments)
        ]:
            if segments or track in self.codecs:
                names.append(topology.init_key(self.tenant, self.id, track))
            names += [topology.segment_key(self.tenant, self.id, track, int(i)) for i in segments]
        return names

    def encoded_share(self) -> float:
        """Percent of the expected segments encoded (every rendition alike)."""
        if self.chunks_planned and len(self.chunks_done) >= self.chunks_planned:
            return 99.9  # every chunk is in (the plan's count is an estimate): stitching
        done = sum(self.chunk_progress.values())
        expected = max(self.segments_planned, done, 1)
        return min(99.9, 100.0 * done / expected)


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(VideoRecord)


def apply(record: VideoRecord | None, event, now: float, seq: int = 0) -> VideoRecord | None:
    """The record after `event`, stored at stream sequence `seq` (0: unknown), or None when
    the event changes nothing. An event that changes nothing else still moves `seq` on:
    a caller waiting for it must learn that it is in."""
    base = record or VideoRecord(id=event.video_id, tenant=event.tenant, created_at=now, updated_at=now)
    new = _fold(base, event)
    later = max(seq, base.seq)
    if record is not None and new == record:
        return msgspec.structs.replace(record, seq=later) if later > record.seq else None
    return msgspec.structs.replace(new, updated_at=now, seq=later)


def _fold(r: VideoRecord, e) -> VideoRecord:
    replace = msgspec.structs.replace
    if isinstance(e, contracts.VideoDeleted):
        return replace(r, status="deleted", progress={})
    if r.status == "deleted":
        return r
    if isinstance(e, contracts.VideoUploaded):
        if r.uploaded:
            return r
        return replace(
            r, uploaded=True, created_at=e.created_at, source=e.source, source_object=e.object, filename=e.filename
        )
    if isinstance(e, contracts.VideoPlanned):
        return _with_progress(
            replace(
                r,
                planned=list(e.renditions),
                segments_planned=e.segments,
                chunks_planned=e.chunks,
                segment_s=e.segment_s,
            )
        )
    if isinstance(e, contracts.ChunkProgress):
        key = str(e.chunk)
        if r.status in TERMINAL or e.chunk in r.chunks_done or e.segments <= r.chunk_progress.get(key, 0):
            return r
        return _with_progress(replace(r, chunk_progress={**r.chunk_progress, key: e.segments}))
    if isinstance(e, contracts.ChunkEncoded):
        stored = {
            str(s.index): StoredSegment(start=s.start, duration=s.duration, sizes=s.sizes, chunk=e.chunk)
            for s in e.segments
        }
        done = r.chunks_done if e.chunk in r.chunks_done else sorted([*r.chunks_done, e.chunk])
        return _with_progress(
            replace(
                r,
                segments={**r.segments, **stored},
                chunks_done=done,
                chunk_progress={**r.chunk_progress, str(e.chunk): len(e.segments)},
                codecs={**r.codecs, **e.codecs},
                warnings=_with_warnings(r.warnings, e.warnings),
            )
        )
    if isinstance(e, contracts.AudioEncoded):
        stored = {str(s.index): StoredSegment(start=s.start, duration=s.duration, sizes=s.sizes) for s in e.segments}
        return replace(
            r,
            audio_segments=stored,
            codecs={**r.codecs, topology.AUDIO_TRACK: e.codec},
            warnings=_with_warnings(r.warnings, e.warnings),
        )
    if isinstance(e, contracts.VideoPlayable):
        return replace(r, playable=True)
    if isinstance(e, contracts.RenditionStitched):
        done = StoredRendition(
            width=e.width, height=e.height, object=e.object, size=e.size, duration=e.duration, has_audio=e.has_audio
        )
        return replace(r, renditions={**r.renditions, e.rendition: done}, progress={**r.progress, e.rendition: 100.0})
    if isinstance(e, contracts.ThumbnailExtracted):
        return replace(r, thumbnail=StoredThumbnail(object=e.object, width=e.width, height=e.height, size=e.size))
    if isinstance(e, contracts.VideoReady):
        missing = [spec.name for spec in r.planned if spec.name not in r.renditions]
        if r.status not in ("ready", "deleted") and (not r.planned or missing or r.thumbnail is None):
            raise Incomplete(f"ready before {', '.join(missing) or 'its plan or thumbnail'}")
        # failed -> ready happens when a dead-lettered task is replayed and succeeds; the
        # pipeline never announces ready and then failed, so no fact is undone here.
        if r.status in ("ready", "deleted"):
            return r
        return replace(r, status="ready", error=None, warnings=list(e.warnings) or r.warnings)
    if isinstance(e, contracts.VideoFailed):
        return r if r.status in TERMINAL else replace(r, status="failed", error=e.error)
    if isinstance(e, contracts.TaskFailed):
        return r  # the pipeline decides what a failed task means for the video
    return r


def _with_warnings(known: list[contracts.WarningInfo], new: list[contracts.WarningInfo]) -> list[contracts.WarningInfo]:
    return known + [w for w in new if w not in known]


def _with_progress(r: VideoRecord) -> VideoRecord:
    """Progress of every rendition not yet stitched: the share of its segments encoded."""
    if r.status in TERMINAL:
        return r
    share = round(r.encoded_share(), 1)
    progress = {spec.name: (100.0 if spec.name in r.renditions else share) for spec in r.planned}
    return msgspec.structs.replace(r, progress=progress)


def to_view(r: VideoRecord) -> contracts.Video:
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
                    contracts.Rendition(
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
        thumb = contracts.Thumbnail(url=f"{base}/thumbnail", width=r.thumbnail.width, height=r.thumbnail.height)
    return contracts.Video(
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
        playable=plays(r),
        playback=contracts.Playback(hls=f"{base}/hls/master.m3u8") if plays(r) else None,
        warnings=[] if deleted else list(r.warnings),
    )


def plays(r: VideoRecord) -> bool:
    """HLS plays the video: its first segments are stored and it is processing or ready. A
    failed video does not (its playlists would stay EVENT playlists that never end), nor a
    deleted one."""
    return r.playable and r.status in ("processing", "ready")


def playable_segments(r: VideoRecord) -> list[tuple[int, StoredSegment]]:
    """The video segments a player may list: those of the chunks done in a row from chunk 0
    (chunks finish in any order; a playlist grows only at its end)."""
    prefix = -1
    for chunk in sorted(r.chunks_done):
        if chunk != prefix + 1:
            break
        prefix = chunk
    segments = [(int(i), s) for i, s in r.segments.items() if 0 <= s.chunk <= prefix]
    return sorted(segments, key=lambda item: item[0])


def to_playlist(r: VideoRecord) -> contracts.Playlist:
    """What the gateway needs to write the video's HLS playlists."""
    if not plays(r):
        return contracts.Playlist(status=r.status, playable=False)
    renditions = [
        contracts.PlaylistRendition(
            name=spec.name, width=spec.width, height=spec.height, codec=r.codecs.get(spec.name, "avc1")
        )
        for spec in r.planned
    ]
    audio = sorted((int(i), s) for i, s in r.audio_segments.items())
    return contracts.Playlist(
        status=r.status,
        renditions=renditions,
        segments=_segment_infos(playable_segments(r)),
        audio_segments=_segment_infos(audio),
        audio_codec=r.codecs.get(topology.AUDIO_TRACK) if r.audio_segments else None,
        frame_rate=r.source.fps if r.source else None,
        playable=True,
    )


def _segment_infos(segments: list[tuple[int, StoredSegment]]) -> list[contracts.SegmentInfo]:
    """Stored segments, by index, as the playlist contract lists them."""
    return [contracts.SegmentInfo(index=i, start=s.start, duration=s.duration, sizes=s.sizes) for i, s in segments]

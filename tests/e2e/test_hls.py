"""HLS as a player sees it: a mesh of its own, real HTTP, FFmpeg's HLS demuxer.

What a user or a player checks:
- FFmpeg's HLS demuxer (PyAV `av.open` of the master playlist URL with a read token, and of
  each media playlist URL) reads every variant and the audio from start to end with no
  error, every frame once, as long as the source;
- the master playlist tells the truth about the streams: RESOLUTION, FRAME-RATE and
  CODECS (the avc1 string read from the init segment's avcC) of each rendition, BANDWIDTH
  at least the peak and AVERAGE-BANDWIDTH the real bit rate of the fragments served, an
  audio group exactly when the source has sound;
- media playlists: EXT-X-MAP, EXTINF summing to the source duration, the TARGETDURATION
  rule, aligned segments across renditions, VOD with ENDLIST once ready;
- a video plays while it is still processing: `playable` and `video_playable` come before
  `video_ready`, the media playlists are EVENT playlists without ENDLIST whose segments
  only grow, then VOD with ENDLIST; before that, and once it failed, it is a JSON 404;
- the fragments place every frame once on the source timeline, the same in every rendition
  (what Safari and Media Source Extensions compute from tfdt and composition offsets);
- a playlist fetched with `?token=` carries the token on every URI, each of which answers
  without any header; bad, expired and foreign credentials are refused; a deleted video's
  fragments are gone;
- fragments are immutable with ETag (304) and Range (206); playlists are not cached while
  processing; every route answers cross-origin players (CORS).

The mesh cuts 1 s segments and 2 s chunks, so a few seconds of small video give several
chunks and segments quickly; one transcoder process encodes them one after another, which
leaves a video playable for a while before it is ready.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import av
import httpx
import m3u8
import numpy as np
import pytest

from services.client import parse_sse
from services.gateway import tokens
from shared import topology
from tests.clips import make_clip
from tests.conftest import Mesh, alive, mesh_events, service_pids, wait_for
from tests.e2e.lost_media import delete_media

pytestmark = pytest.mark.e2e

SEGMENT_S = 1
CHUNK_S = 2
FPS = 30
FRAME_S = 1 / FPS
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
FRAGMENT_CACHE = "private, max-age=31536000, immutable"

# What each clip is for: `watched` is followed from its upload (several chunks, two
# renditions, sound); `silent` has no audio; `doomed` is deleted once playable.
CLIPS = {
    "watched": dict(width=640, height=480, seconds=8.0, gop=FPS),  # 480p + 360p, 4 chunks, 8 segments
    "silent": dict(width=320, height=240, seconds=2.0, gop=FPS, audio=False),  # 240p, no sound
    "doomed": dict(width=320, height=240, seconds=2.0, gop=FPS),
}


# --- what the source holds -------------------------------------------------------------------


THUMB = (64, 48)  # every clip here is 4:3: frames are compared at this size


@dataclass(frozen=True)
class Source:
    path: str
    data: bytes
    duration: float  # the container's
    video: Track
    audio: Track | None  # None: silent


def decode_source(path: str) -> Source:
    with av.open(path) as c:
        duration = c.duration / av.time_base
        video = _decode(c, c.streams.video[0])
    audio = None
    with av.open(path) as c:
        if c.streams.audio:
            audio = _decode(c, c.streams.audio[0])
    return Source(path, Path(path).read_bytes(), duration, video, audio)


@dataclass
class Track:
    """One decoded stream: its frames' start times, where it ends, and (video) each frame
    shrunk to THUMB in grey, to tell frames apart by their picture."""

    kind: str
    width: int | None = None
    height: int | None = None
    profile: str | None = None
    starts: list[float] = field(default_factory=list)
    end: float = 0.0
    thumbs: list = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.starts)

    @property
    def span(self) -> float:
        return self.end - min(self.starts) if self.starts else 0.0


def _decode(container, stream) -> Track:
    track = Track(stream.type)
    for frame in container.decode(stream):
        _add(track, frame, stream)
    return track


def _add(track: Track, frame, stream) -> None:
    start = float(frame.pts * frame.time_base)
    if isinstance(frame, av.AudioFrame):
        length = frame.samples / frame.sample_rate
    else:
        length = float(frame.duration * frame.time_base) if frame.duration else 1 / float(stream.average_rate)
        track.width, track.height = frame.width, frame.height
        small = frame.reformat(width=THUMB[0], height=THUMB[1], format="gray", interpolation="AREA")
        track.thumbs.append(small.to_ndarray().astype(np.float32))
    track.starts.append(start)
    track.end = max(track.end, start + length)


def play(url: str) -> tuple[dict[int, Track], list, float]:
    """Open `url` with FFmpeg (the HLS demuxer when it is a playlist) and decode every stream
    of it to the end: ({stream index: Track}, FFmpeg's warnings and errors, the duration
    the demuxer reports)."""
    tracks: dict[int, Track] = {}
    level = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)
    try:
        with av.logging.Capture() as logs, av.open(url, timeout=30) as c:
            duration = c.duration / av.time_base
            for s in c.streams:
                tracks[s.index] = Track(s.type, profile=s.codec_context.profile)
            for packet in c.demux():
                for frame in packet.decode():
                    _add(tracks[packet.stream.index], frame, packet.stream)
    finally:
        av.logging.set_level(level)
    problems = [entry for entry in logs if entry[0] <= av.logging.WARNING]
    return tracks, problems, duration


def same_pictures(got: Track, source: Track) -> list[int]:
    """The frames of `got` whose picture is not most like the source frame of the same
    index (rather than the one before or after): a dropped, repeated or reordered frame
    shows here even when the count and the timestamps look right. The clip's texture
    slides 4 px a frame, so neighbours differ far more than an encode does."""
    wrong = []
    for k, thumb in enumerate(got.thumbs):
        diffs = {j: float(np.abs(thumb - source.thumbs[j]).mean()) for j in (k - 1, k, k + 1) if 0 <= j < source.frames}
        if k not in diffs or min(diffs, key=diffs.get) != k:
            wrong.append(k)
    return wrong


# --- the init segment: the avcC box -----------------------------------------------------------


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8 and pos + size <= end, f"bad box {kind!r} at {pos}"
        yield kind.decode("latin-1"), pos + 8, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: str) -> tuple[int, int]:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    raise AssertionError(f"no {kind} box")


def avc_codec_of(init: bytes) -> str:
    """RFC 6381 `avc1.PPCCLL` from the avcC of the init segment's sample entry
    (ISO/IEC 14496-15 5.3.3.1: profile_idc, constraint flags, level_idc)."""
    s, e = 0, len(init)
    for kind in ("moov", "trak", "mdia", "minf", "stbl", "stsd"):
        s, e = _child(init, s, e, kind)
    entry = next(_boxes(init, s + 8, e))  # stsd: version/flags, entry_count, then the entries
    kind, s, e = entry
    assert kind == "avc1", f"sample entry {kind}"
    s, e = _child(init, s + 78, e, "avcC")  # after the VisualSampleEntry fields
    profile, constraints, level = init[s + 1], init[s + 2], init[s + 3]
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"


H264_PROFILES = {66: ("Baseline", "Constrained Baseline"), 77: ("Main",), 100: ("High",)}


def timescale_of(init: bytes) -> tuple[int, int]:
    """(mdhd timescale, trex default sample duration) of the init segment's one track."""
    s, e = 0, len(init)
    for kind in ("moov", "trak", "mdia", "mdhd"):
        s, e = _child(init, s, e, kind)
    scale = struct.unpack_from(">I", init, s + (20 if init[s] == 1 else 12))[0]
    s, e = _child(init, *_child(init, 0, len(init), "moov"), "mvex")
    s, e = _child(init, s, e, "trex")
    return scale, struct.unpack_from(">I", init, s + 12)[0]


@dataclass(frozen=True)
class Samples:
    """The samples of one fragment as ISO/IEC 14496-12 places them (8.8.8, 8.8.12):
    decode time from `tfdt` plus the durations before it, composition time = decode time
    plus the (signed, in trun version 1) composition offset."""

    tfdt: int
    durations: list[int]
    offsets: list[int]

    @property
    def composition(self) -> list[int]:
        out, t = [], self.tfdt
        for duration, offset in zip(self.durations, self.offsets):
            out.append(t + offset)
            t += duration
        return out


def samples_of(fragment: bytes, default_duration: int) -> Samples:
    moof = _child(fragment, 0, len(fragment), "moof")
    s, e = _child(fragment, *moof, "traf")
    tfhd = _child(fragment, s, e, "tfhd")[0]
    flags = int.from_bytes(fragment[tfhd + 1 : tfhd + 4], "big")
    pos = tfhd + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
    if flags & 0x08:  # default-sample-duration-present
        default_duration = struct.unpack_from(">I", fragment, pos)[0]
    tfdt = _child(fragment, s, e, "tfdt")[0]
    base = struct.unpack_from(">Q" if fragment[tfdt] == 1 else ">I", fragment, tfdt + 4)[0]
    trun = _child(fragment, s, e, "trun")[0]
    version, flags = fragment[trun], int.from_bytes(fragment[trun + 1 : trun + 4], "big")
    count = struct.unpack_from(">I", fragment, trun + 4)[0]
    pos = trun + 8 + (4 if flags & 0x001 else 0) + (4 if flags & 0x004 else 0)
    durations, offsets = [], []
    for _ in range(count):
        durations.append(struct.unpack_from(">I", fragment, pos)[0] if flags & 0x100 else default_duration)
        pos += 4 if flags & 0x100 else 0
        pos += (4 if flags & 0x200 else 0) + (4 if flags & 0x400 else 0)
        offsets.append(struct.unpack_from(">i" if version else ">I", fragment, pos)[0] if flags & 0x800 else 0)
        pos += 4 if flags & 0x800 else 0
    return Samples(base, durations, offsets)


# --- HTTP helpers ------------------------------------------------------------------------------


def hls(video_id: str, path: str = "master.m3u8") -> str:
    return f"/v1/videos/{video_id}/hls/{path}"


def error_code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text[:200])
    body = r.json()
    assert body["message"], body
    return body["code"]


def uris(playlist: m3u8.M3U8) -> list[str]:
    """Every URI a playlist lists: the variants and the audio group, or the init segment
    and the fragments."""
    if playlist.is_variant:
        return [p.uri for p in playlist.playlists] + [m.uri for m in playlist.media if m.uri]
    return [m.uri for m in playlist.segment_map] + [s.uri for s in playlist.segments]


def token_of(uri: str) -> list[str] | None:
    return parse_qs(urlsplit(uri).query).get("token")


@dataclass
class Downloaded:
    """A ready video as a player downloads it, by its master playlist."""

    master: m3u8.M3U8
    media: dict[str, m3u8.M3U8]  # track -> its media playlist
    init: dict[str, bytes]
    fragments: dict[str, list[bytes]]  # track -> fragment bodies in playlist order


def download(base: str, video_id: str, token: str) -> Downloaded:
    """Everything the master playlist leads to, fetched with no header (the token rides
    along in every URI)."""
    with httpx.Client(timeout=60) as bare:
        master_url = f"{base}{hls(video_id)}?token={token}"
        master = m3u8.loads(bare.get(master_url).text)
        tracks = {p.uri.split("/")[0]: urljoin(master_url, p.uri) for p in master.playlists}
        tracks.update({m.uri.split("/")[0]: urljoin(master_url, m.uri) for m in master.media if m.uri})
        out = Downloaded(master, {}, {}, {})
        for track, url in tracks.items():
            r = bare.get(url)
            assert r.status_code == 200, (url, r.text[:200])
            playlist = out.media[track] = m3u8.loads(r.text)
            out.init[track] = bare.get(urljoin(url, playlist.segment_map[0].uri)).content
            out.fragments[track] = [bare.get(urljoin(url, s.uri)).content for s in playlist.segments]
        return out


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hls_mesh():
    env = {"VIDMESH_SEGMENT_S": str(SEGMENT_S), "VIDMESH_CHUNK_S": str(CHUNK_S), "VIDMESH_TRANSCODER_PROCS": "1"}
    with tempfile.TemporaryDirectory(prefix="vidmesh-hls-") as tmp:
        m = Mesh(Path(tmp), env).start()
        try:
            yield m
        finally:
            pids = m.child_pids()
            assert m.stop() == 0, "\n".join(m.lines[-40:])
            wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Source]:
    folder = tmp_path_factory.mktemp("hls-clips")
    return {name: decode_source(make_clip(folder / f"{name}.mp4", **kw)) for name, kw in CLIPS.items()}


@dataclass
class Watched:
    """The `watched` clip followed from its upload to ready."""

    id: str
    before: dict  # responses while no chunk could be encoded yet
    seen: list[dict]  # one entry per poll while processing and playable
    final: dict  # the video JSON once ready
    events: list[str]  # SSE event names, history included
    others: dict[str, str]  # the other clips' ids, uploaded behind it


@pytest.fixture(scope="module")
def watched(hls_mesh, sources) -> Watched:
    """Upload `watched` with the transcoder frozen (so it cannot be playable yet), look at
    it, let the transcoder go, then poll the video and its playlists until it is ready."""
    (transcoder,) = [pid for name, pid in service_pids(hls_mesh).items() if name.startswith("transcoder")]
    with hls_mesh.client() as c:
        os.kill(transcoder, signal.SIGSTOP)
        try:
            r = c.post("/v1/videos", content=sources["watched"].data, headers={"Content-Type": "video/mp4"})
            assert r.status_code == 202, r.text
            video_id = r.json()["id"]
            before = {
                "video": c.get(f"/v1/videos/{video_id}").json(),
                "master": c.get(hls(video_id)),
                "media": c.get(hls(video_id, "360p/playlist.m3u8")),
                "head": c.head(hls(video_id)),
            }
        finally:
            os.kill(transcoder, signal.SIGCONT)
        # the other clips queue behind it on the one transcoder
        others = {}
        for name in ("silent", "doomed"):
            r = c.post("/v1/videos", content=sources[name].data, headers={"Content-Type": "video/mp4"})
            assert r.status_code == 202, r.text
            others[name] = r.json()["id"]

        seen: list[dict] = []
        last = {}

        def ready() -> bool:
            video = c.get(f"/v1/videos/{video_id}").json()
            last["video"] = video
            if video["status"] == "failed":
                raise AssertionError(f"the video failed: {video}")
            if video["status"] == "processing" and video["playable"]:
                polled = {"video": video, "master": c.get(hls(video_id))}
                for track in ("480p", "360p", "audio"):
                    polled[track] = c.get(hls(video_id, f"{track}/playlist.m3u8"))
                seen.append(polled)
            return video["status"] == "ready"

        wait_for(ready, 120, 0.02, f"video {video_id} to be ready")
        with c.stream("GET", f"/v1/videos/{video_id}/events", timeout=httpx.Timeout(10, read=30)) as stream:
            events = [name for name, _, _ in parse_sse(stream.iter_lines())]
    return Watched(video_id, before, seen, last["video"], events, others)


@pytest.fixture(scope="module")
def ready_ids(hls_mesh, watched) -> dict[str, str]:
    """Every clip's id once ready (`watched` first, the others were queued behind it)."""
    ids = {"watched": watched.id, **watched.others}
    with hls_mesh.client() as c:

        def all_ready():
            return all(c.get(f"/v1/videos/{vid}").json()["status"] == "ready" for vid in ids.values())

        wait_for(all_ready, 120, 0.1, "every clip to be ready")
    return ids


@pytest.fixture(scope="module")
def token(hls_mesh) -> str:
    with hls_mesh.client() as c:
        return c.post("/v1/tokens").json()["token"]


@pytest.fixture(scope="module")
def watched_files(hls_mesh, watched, token) -> Downloaded:
    return download(hls_mesh.url, watched.id, token)


# --- playable while processing ------------------------------------------------------------------


def test_a_video_not_playable_yet_answers_404_with_a_json_code(watched):
    video = watched.before["video"]
    assert video["status"] == "processing" and video["playable"] is False and video["playback"] is None, video
    for name in ("master", "media"):
        r = watched.before[name]
        assert r.status_code == 404, (name, r.text)
        assert error_code(r) == "not_found"
        assert "not playable" in r.json()["message"]
    assert watched.before["head"].status_code == 404


def test_a_video_plays_while_processing_and_its_playlists_only_grow(hls_mesh, watched, sources):
    final = watched.final
    assert final["status"] == "ready" and final["playable"] is True
    assert final["playback"] == {"hls": f"/v1/videos/{watched.id}/hls/master.m3u8"}

    # the video was playable, and said so, before it was ready
    names = watched.events
    assert names.count("video_playable") == 1, names
    assert names.index("video_playable") < names.index("video_ready"), names
    assert watched.seen, "never saw the video playable while it was processing"
    assert all(s["video"]["playback"] == final["playback"] for s in watched.seen)

    tracks = ("480p", "360p", "audio")
    growth: dict[str, list[list[tuple[str, float]]]] = {t: [] for t in tracks}
    ended: set[str] = set()
    for polled in watched.seen:
        master = polled["master"]
        assert master.status_code == 200, master.text
        assert [p.uri for p in m3u8.loads(master.text).playlists] == ["480p/playlist.m3u8", "360p/playlist.m3u8"]
        processing = True
        for track in tracks:
            r = polled[track]
            assert r.status_code == 200, (track, r.text)
            assert r.headers["content-type"] == PLAYLIST_TYPE
            pl = m3u8.loads(r.text)
            assert pl.segment_map[0].uri == "init.mp4"
            listed = [(s.uri, s.duration) for s in pl.segments]
            assert listed, f"{track}: a playable video lists at least its first segment"
            assert [u for u, _ in listed] == [f"{i:05d}.m4s" for i in range(len(listed))], "a prefix, no gap"
            growth[track].append(listed)
            if pl.is_endlist:  # it became ready between the status poll and this request
                assert pl.playlist_type == "vod" and r.headers["cache-control"] != "no-cache", r.headers
                ended.add(track)
                processing = False
                continue
            assert track not in ended, f"{track}: EVENT again after ENDLIST"
            assert pl.playlist_type == "event", (track, r.text)
            assert r.headers["cache-control"] == "no-cache", "a growing playlist must be fetched again"
        if processing:  # the master was fetched before playlists that were still growing
            assert master.headers["cache-control"] == "no-cache"

    segments = round(sources["watched"].duration / SEGMENT_S)
    with hls_mesh.client() as c:
        for track in tracks:
            pl = m3u8.loads(c.get(hls(watched.id, f"{track}/playlist.m3u8")).text)
            assert pl.playlist_type == "vod" and pl.is_endlist
            growth[track].append([(s.uri, s.duration) for s in pl.segments])
    for track, lists in growth.items():
        for earlier, later in zip(lists, lists[1:]):
            assert later[: len(earlier)] == earlier, f"{track}: the playlist changed what it had listed"
        assert len(lists[-1]) == segments, (track, len(lists[-1]))
    # the renditions grew while the chunks were encoded one after another, in step
    lengths = [len(x) for x in growth["360p"]]
    assert min(lengths) < segments and len(set(lengths)) > 1, lengths
    # every rendition lists the same segments (360p is fetched just after 480p: as much or more)
    for first, then in zip(growth["480p"], growth["360p"]):
        assert then[: len(first)] == first, (first, then)
    assert growth["360p"][-1] == growth["480p"][-1]


def test_video_playable_is_on_the_bus_before_video_ready(hls_mesh, watched):
    events = mesh_events(hls_mesh, "alice", watched.id, ("video_playable", "video_ready"))
    kinds = [kind for _, kind, _ in events]
    assert kinds == ["video_playable", "video_ready"], events
    assert events[0][2]["video_id"] == watched.id and events[0][2]["tenant"] == "alice"


# --- FFmpeg plays it ---------------------------------------------------------------------------


def ffmpeg_shift(files: Downloaded, track: str) -> float:
    """How late FFmpeg may show a track's frames, in seconds. The fragments place the IDR
    that opens each segment at its `tfdt` and earlier-shown B-frames at negative
    composition offsets (trun version 1, as CMAF allows). FFmpeg's mov demuxer never lets a
    timestamp go below the decode time: from the first negative offset it meets on, it
    shifts every timestamp later by the largest one so far. That shift is all the slack
    FFmpeg's timestamps get here; the exact timeline is checked on the fragments (below)."""
    scale, default = timescale_of(files.init[track])
    lowest = min(min(samples_of(f, default).offsets) for f in files.fragments[track])
    return max(0, -lowest) / scale


@pytest.mark.parametrize("name", ["watched", "silent"])
def test_ffmpeg_plays_every_variant_and_the_audio_from_start_to_end(hls_mesh, ready_ids, sources, token, name):
    source = sources[name]
    video_id = ready_ids[name]
    files = download(hls_mesh.url, video_id, token)
    with hls_mesh.client() as c:
        video = c.get(f"/v1/videos/{video_id}").json()
    by_size = {(r["width"], r["height"]): r["name"] for r in video["renditions"]}
    base = f"{hls_mesh.url}/v1/videos/{video_id}/hls"

    def check_video(label: str, track: Track) -> None:
        assert track.frames == pytest.approx(source.video.frames, abs=1), (label, track.frames, source.video.frames)
        assert not same_pictures(track, source.video), (
            f"{label}: frames out of place: {same_pictures(track, source.video)}"
        )
        slack = ffmpeg_shift(files, by_size[(track.width, track.height)])
        assert source.video.span - FRAME_S <= track.span <= source.video.span + FRAME_S + slack + 1e-6, (
            label,
            track.span,
            slack,
        )
        steps = [b - a for a, b in zip(track.starts, track.starts[1:])]
        assert all(FRAME_S - 1e-6 <= step <= FRAME_S + slack + 1e-6 for step in steps), (label, sorted(set(steps)))

    def check_audio(label: str, track: Track) -> None:
        assert source.audio is not None and track.profile == "LC"
        assert track.span == pytest.approx(source.audio.span, abs=FRAME_S), (label, track.span, source.audio.span)

    # the master playlist: every variant (and the audio group) at once
    tracks, problems, duration = play(f"{base}/master.m3u8?token={token}")
    assert not problems, problems
    assert duration == pytest.approx(source.duration, abs=FRAME_S)
    videos = [t for t in tracks.values() if t.kind == "video"]
    audios = [t for t in tracks.values() if t.kind == "audio"]
    assert sorted((t.width, t.height) for t in videos) == sorted(by_size)
    assert len(audios) == (1 if source.audio is not None else 0)
    for t in videos:
        check_video(f"master {t.width}x{t.height}", t)
    for t in audios:
        check_audio("master audio", t)

    # each media playlist on its own, as a player that picked one variant reads it
    for rendition in video["renditions"]:
        tracks, problems, duration = play(f"{base}/{rendition['name']}/playlist.m3u8?token={token}")
        assert not problems, (rendition["name"], problems)
        assert duration == pytest.approx(source.duration, abs=FRAME_S)
        (only,) = tracks.values()
        assert (only.kind, only.width, only.height) == ("video", rendition["width"], rendition["height"])
        check_video(rendition["name"], only)
    if source.audio is not None:
        tracks, problems, _ = play(f"{base}/audio/playlist.m3u8?token={token}")
        assert not problems, problems
        (only,) = tracks.values()
        assert only.kind == "audio"
        check_audio("audio", only)


def test_fragments_place_every_frame_once_on_the_source_timeline(watched_files, sources):
    """The timeline a player builds from the fragments (ISO BMFF: tfdt, sample durations,
    signed composition offsets), as Safari or a browser's Media Source Extensions do: every
    rendition shows exactly the source's frames, each once, on the same instants; each
    segment opens at its own start; the audio runs on without a gap or an overlap."""
    files, source = watched_files, sources["watched"]
    timelines = {}
    for track in ("480p", "360p"):
        scale, default = timescale_of(files.init[track])
        assert scale % FPS == 0, scale
        frame = scale // FPS
        shown = []
        for i, (fragment, segment) in enumerate(zip(files.fragments[track], files.media[track].segments)):
            samples = samples_of(fragment, default)
            assert samples.tfdt == i * SEGMENT_S * scale, (track, i, samples.tfdt)
            assert min(samples.composition) == samples.tfdt, f"{track} segment {i} does not open at its start"
            assert sum(samples.durations) == round(segment.duration * scale), (track, i)  # EXTINF as stored
            shown += samples.composition
        assert sorted(shown) == [k * frame for k in range(source.video.frames)], track
        timelines[track] = sorted(shown)
    assert timelines["480p"] == timelines["360p"]

    scale, default = timescale_of(files.init["audio"])
    at = 0
    for i, (fragment, segment) in enumerate(zip(files.fragments["audio"], files.media["audio"].segments)):
        samples = samples_of(fragment, default)
        assert samples.tfdt == at, f"audio segment {i} starts at {samples.tfdt}, the one before ended at {at}"
        at += sum(samples.durations)
        # EXTINF is the segment on the video's timeline: at most one AAC frame off
        assert abs(sum(samples.durations) - segment.duration * scale) <= 1024 * scale / 48000, (i, segment.duration)
    assert at / scale == pytest.approx(source.audio.span, abs=FRAME_S)


# --- the master playlist ------------------------------------------------------------------------


def test_master_playlist_describes_each_rendition_as_it_is(hls_mesh, watched, watched_files, token):
    files = watched_files
    master = files.master
    assert master.is_variant and master.is_independent_segments and int(master.version) >= 7
    renditions = watched.final["renditions"]
    assert [p.uri for p in master.playlists] == [f"{r['name']}/playlist.m3u8?token={token}" for r in renditions]

    # the audio group: once, and every variant refers to it
    (audio,) = master.media
    assert (audio.type, audio.uri) == ("AUDIO", f"audio/playlist.m3u8?token={token}")
    assert audio.default == "YES" and audio.autoselect == "YES"

    audio_sizes = [len(f) for f in files.fragments["audio"]]
    for variant, rendition in zip(master.playlists, renditions):
        name, info = rendition["name"], variant.stream_info
        init = files.init[name]
        with av.open(io.BytesIO(init + b"".join(files.fragments[name][:1]))) as c:
            stream = c.streams.video[0]
            decoded = (stream.codec_context.width, stream.codec_context.height)
            profile, rate = stream.codec_context.profile, float(stream.average_rate)
        assert info.resolution == decoded == (rendition["width"], rendition["height"]), name
        assert info.frame_rate == pytest.approx(rate, abs=0.001) and rate == pytest.approx(FPS), name
        avc1 = avc_codec_of(init)
        assert profile in H264_PROFILES[int(avc1[5:7], 16)], (avc1, profile)
        assert info.codecs == f"{avc1},mp4a.40.2", name
        assert info.audio == audio.group_id

        # bit rates from the bytes a player downloads (video fragment + the audio one beside it)
        durations = [s.duration for s in files.media[name].segments]
        bits = [8 * (len(v) + a) for v, a in zip(files.fragments[name], audio_sizes)]
        peak = max(b / d for b, d in zip(bits, durations))
        average = sum(bits) / sum(durations)
        assert peak <= info.bandwidth <= peak * 1.05 + 1, (name, info.bandwidth, peak)
        assert info.average_bandwidth == pytest.approx(average, rel=0.02), (name, info.average_bandwidth, average)
        assert info.average_bandwidth <= info.bandwidth


def test_a_silent_video_has_no_audio_group(hls_mesh, ready_ids, token):
    video_id = ready_ids["silent"]
    files = download(hls_mesh.url, video_id, token)
    master = files.master
    assert master.media == [] and "EXT-X-MEDIA" not in master.dumps()
    (variant,) = master.playlists
    assert variant.stream_info.codecs == avc_codec_of(files.init["240p"]), "no mp4a for a silent video"
    assert variant.stream_info.audio is None
    assert variant.stream_info.resolution == (320, 240)
    with hls_mesh.client() as c:
        r = c.get(hls(video_id, "audio/playlist.m3u8"))
    assert r.status_code == 404 and error_code(r) == "not_found"


# --- media playlists ----------------------------------------------------------------------------


def test_media_playlists_of_a_ready_video(watched, watched_files, sources, token):
    source = sources["watched"]
    media = watched_files.media
    assert set(media) == {"480p", "360p", "audio"}
    for track, pl in media.items():
        assert pl.playlist_type == "vod" and pl.is_endlist, track
        assert int(pl.version) >= 6, "fMP4 segments need EXT-X-MAP (version 6+)"
        assert pl.media_sequence == 0
        assert [m.uri for m in pl.segment_map] == [f"init.mp4?token={token}"], track
        assert [s.uri for s in pl.segments] == [f"{i:05d}.m4s?token={token}" for i in range(len(pl.segments))]
        durations = [s.duration for s in pl.segments]
        # RFC 8216 4.3.3.1: every EXTINF, rounded, at most the target; the target no larger
        assert all(round(d) <= pl.target_duration for d in durations), (track, pl.target_duration)
        assert pl.target_duration == max(1, max(round(d) for d in durations)), track
        assert sum(durations) == pytest.approx(source.duration, abs=FRAME_S), (track, sum(durations))
        assert all(len(f) > 0 for f in watched_files.fragments[track])
    # the renditions switch cleanly: the same segments, the same durations
    assert [(s.uri, s.duration) for s in media["480p"].segments] == [
        (s.uri, s.duration) for s in media["360p"].segments
    ]
    assert len(media["480p"].segments) == round(source.duration / SEGMENT_S)
    assert len(media["audio"].segments) == len(media["480p"].segments)


# --- tokens and tenants --------------------------------------------------------------------------


def test_a_token_playlist_carries_the_token_on_every_uri_and_each_answers_without_a_header(hls_mesh, watched, token):
    master_url = f"{hls_mesh.url}{hls(watched.id)}?token={token}"
    checked = 0
    with httpx.Client(timeout=60) as bare:  # no Authorization header, ever
        pending = [master_url]
        while pending:
            url = pending.pop()
            r = bare.get(url)
            assert r.status_code == 200, (url, r.text[:200])
            checked += 1
            if not urlsplit(url).path.endswith(".m3u8"):
                continue
            pl = m3u8.loads(r.text)
            listed = uris(pl)
            assert listed, url
            for uri in listed:
                assert token_of(uri) == [token], (url, uri)
                pending.append(urljoin(url, uri))
    assert checked >= 1 + 3 + 3 * (1 + 8), checked  # master, 3 playlists, their inits and fragments

    # with the API key in the header, no token is written into the playlist
    with hls_mesh.client() as c:
        for path in ("master.m3u8", "480p/playlist.m3u8", "audio/playlist.m3u8"):
            r = c.get(hls(watched.id, path))
            assert r.status_code == 200 and "token" not in r.text, r.text
            assert all(not urlsplit(u).query for u in uris(m3u8.loads(r.text))), r.text


def test_bad_expired_and_foreign_credentials_are_refused(hls_mesh, watched, watched_files, token):
    key = {hls_mesh.KEYS["alice"]: "alice", hls_mesh.KEYS["bob"]: "bob"}
    expired, _ = tokens.mint(key, "alice", now=time.time() - 2 * tokens.TOKEN_TTL_S)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    paths = ["master.m3u8", "360p/playlist.m3u8", "360p/init.mp4", "360p/00000.m4s", "audio/00000.m4s"]
    with httpx.Client(base_url=hls_mesh.url, timeout=60) as bare, hls_mesh.client("bob") as bob:
        bob_token = bob.post("/v1/tokens").json()["token"]
        for path in paths:
            url = hls(watched.id, path)
            assert bare.get(url, params={"token": token}).status_code == 200, path
            for bad in ("nope", tampered, expired):
                r = bare.get(url, params={"token": bad})
                assert r.status_code == 401 and error_code(r) == "unauthorized", (path, bad, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = bare.get(url)
            assert r.status_code == 401 and error_code(r) == "unauthorized", path
            # another tenant: as if the video did not exist, by key or by token
            for r in (bob.get(url), bare.get(url, params={"token": bob_token})):
                assert r.status_code == 404 and error_code(r) == "not_found", (path, r.text)


def test_a_deleted_videos_playlists_and_fragments_are_gone(hls_mesh, ready_ids, token):
    video_id = ready_ids["doomed"]
    files = download(hls_mesh.url, video_id, token)
    urls = ["master.m3u8"]
    for track, pl in files.media.items():
        urls += [f"{track}/playlist.m3u8", f"{track}/init.mp4"] + [
            f"{track}/{s.uri.split('?')[0]}" for s in pl.segments
        ]
    assert len(urls) == 1 + 2 * (2 + 2), urls  # 240p and audio: playlist, init, two fragments
    with hls_mesh.client() as c, httpx.Client(base_url=hls_mesh.url, timeout=60) as bare:
        for path in urls:
            assert bare.get(hls(video_id, path), params={"token": token}).status_code == 200, path
        r = c.delete(f"/v1/videos/{video_id}")
        assert r.status_code == 200, r.text
        video = c.get(f"/v1/videos/{video_id}").json()
        assert video["status"] == "deleted" and video["playable"] is False and video["playback"] is None
        for path in urls:
            for r in (c.get(hls(video_id, path)), bare.get(hls(video_id, path), params={"token": token})):
                assert r.status_code == 404 and error_code(r) == "not_found", (path, r.status_code, r.text[:200])
        assert c.get(hls(video_id)).json()["message"] == f"video {video_id} is not playable: it was deleted"


def test_a_video_that_fails_after_it_was_playable_is_not_left_playing_forever(hls_mesh, tmp_path):
    """A silent 12 s clip: chunk 0 encodes, so the video is playable; then one of chunk 0's
    stored fragments is lost from the object store, and the stitch fails the video
    (`fragment_missing`). A failed video must not keep advertising an EVENT playlist that
    will never end: it is no longer playable, as a failed video has no complete rendition
    either. (A truncated upload no longer fails: it is ready with a warning.)"""
    path = make_clip(tmp_path / "lost.mp4", width=320, height=240, seconds=12.0, gop=FPS, audio=False)
    with hls_mesh.client() as c:
        r = c.post("/v1/videos", content=Path(path).read_bytes(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 202, r.text
        video_id = r.json()["id"]
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["playable"], 120, 0.05, "playable")
        delete_media(hls_mesh, topology.segment_key("alice", video_id, "240p", 0))
        wait_for(lambda: c.get(f"/v1/videos/{video_id}").json()["status"] in ("ready", "failed"), 120, 0.1, "failed")
        events = [kind for _, kind, _ in mesh_events(hls_mesh, "alice", video_id)]
        assert "video_playable" in events and "video_failed" in events, events
        video = c.get(f"/v1/videos/{video_id}").json()
        assert video["status"] == "failed" and video["error"]["code"] == "fragment_missing", video
        assert video["playable"] is False and video["playback"] is None, video
        for path in ("master.m3u8", "240p/playlist.m3u8"):
            r = c.get(hls(video_id, path))
            assert r.status_code == 404 and error_code(r) == "not_found", (path, r.text)
            assert r.json()["message"] == f"video {video_id} is not playable: it failed"


# --- caching, ranges, content types, CORS --------------------------------------------------------


def test_fragments_are_immutable_with_etags_and_ranges(hls_mesh, watched, watched_files):
    cases = [
        ("360p/init.mp4", "video/mp4", watched_files.init["360p"]),
        ("360p/00003.m4s", "video/iso.segment", watched_files.fragments["360p"][3]),
        ("audio/init.mp4", "video/mp4", watched_files.init["audio"]),
        ("audio/00000.m4s", "video/iso.segment", watched_files.fragments["audio"][0]),
    ]
    with hls_mesh.client() as c:
        for path, ctype, body in cases:
            url = hls(watched.id, path)
            r = c.get(url)
            assert r.status_code == 200 and r.content == body, path
            assert r.headers["content-type"] == ctype, path
            assert r.headers["cache-control"] == FRAGMENT_CACHE, path
            assert int(r.headers["content-length"]) == len(body)
            etag = r.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2

            again = c.get(url, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b"", path
            assert again.headers["etag"] == etag

            part = c.get(url, headers={"Range": "bytes=8-99"})
            assert part.status_code == 206, path
            assert part.headers["content-range"] == f"bytes 8-99/{len(body)}"
            assert part.content == body[8:100]

            head = c.head(url)
            assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
            assert int(head.headers["content-length"]) == len(body)

        # a ready video's playlists no longer change, but are not immutable either (a
        # video can be deleted)
        for path in ("master.m3u8", "360p/playlist.m3u8"):
            r = c.get(hls(watched.id, path))
            assert r.headers["content-type"] == PLAYLIST_TYPE
            assert r.headers["cache-control"] != "no-cache" and "immutable" not in r.headers["cache-control"]


def test_cross_origin_players_can_fetch_everything(hls_mesh, watched, token):
    origin = {"Origin": "https://player.example"}
    paths = ["master.m3u8", "480p/playlist.m3u8", "480p/init.mp4", "480p/00000.m4s", "audio/playlist.m3u8"]
    with httpx.Client(base_url=hls_mesh.url, timeout=60) as bare:
        for path in paths:
            url = hls(watched.id, path)
            for method in ("GET", "HEAD"):
                r = bare.request(method, url, params={"token": token}, headers=origin)
                assert r.status_code == 200, (method, path)
                assert r.headers["access-control-allow-origin"] == "*", (method, path)
            # the preflight a page sends before a Range request (no credentials on it)
            pre = bare.options(
                url,
                headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"},
            )
            assert pre.status_code == 204, (path, pre.text)
            assert pre.headers["access-control-allow-origin"] == "*"
            allowed = {m.strip() for m in pre.headers["access-control-allow-methods"].split(",")}
            assert {"GET", "HEAD"} <= allowed, allowed
            assert "range" in pre.headers["access-control-allow-headers"].lower()
        # a refusal is readable by the page too (an expired token shows as 401, not a network error)
        r = bare.get(hls(watched.id), params={"token": "nope"}, headers=origin)
        assert r.status_code == 401 and r.headers.get("access-control-allow-origin") == "*"
        # the rest of the API stays same-origin
        assert "access-control-allow-origin" not in bare.get(f"/v1/videos/{watched.id}", headers=origin).headers

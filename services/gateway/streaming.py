"""HLS: playlists written from the catalog's record of stored segments, and the CMAF init
segments and fragments streamed from the object store (playlist text in hls.py).

Every route takes the API key or a `?token=` read token; a playlist fetched with a token
lists every URI with the same token, so a player that sends no headers (Safari's own,
hls.js) fetches everything. These routes answer cross-origin GET/HEAD (CORS), so a
customer's page on another origin can play a video with a token.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from shared import topology
from shared.bus import Bus
from shared.contracts import GetPlaylist, Playlist

from . import hls, schemas
from .app import ApiError, ConnectedBus, MediaRouter, ReadTenant, check_video_id, fetch_video
from .playback import serve

router = MediaRouter(prefix="/v1/videos/{video_id}/hls")  # the paths HLS_PATH matches

HLS_PATH = re.compile(r"^/v1/videos/[^/]+/hls/")
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, ETag, Accept-Ranges",
}
PREFLIGHT = {
    **CORS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Range",
    "Access-Control-Max-Age": "600",
}
FRAGMENT_CACHE = "private, max-age=31536000, immutable"  # a stored fragment never changes
READY_PLAYLIST_CACHE = "private, max-age=300"
TRACK = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def cors(scope) -> dict | None:
    """CORS on the HLS routes only (the rest of the API is same-origin); their preflights
    are answered with PREFLIGHT (headers.ResponseHeaders)."""
    return CORS if HLS_PATH.match(scope["path"]) else None


@router.get_and_head("/master.m3u8", responses=schemas.PLAYLIST, summary="HLS master playlist")
async def master(video_id: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    playlist = await _playlist(bus, tenant, video_id)
    variants = [
        hls.Variant(r.name, r.width, r.height, r.codec, _track_segments(playlist.segments, r.name))
        for r in playlist.renditions
    ]
    audio = _track_segments(playlist.audio_segments, topology.AUDIO_TRACK) if playlist.audio_codec else None
    text = hls.master_playlist(
        variants,
        audio=audio,
        audio_codec=playlist.audio_codec or "",
        frame_rate=playlist.frame_rate,
        query=_query(request),
    )
    return _playlist_response(request, text, playlist)


@router.get_and_head(
    "/{track}/playlist.m3u8", responses=schemas.PLAYLIST, summary="HLS media playlist of a rendition or the audio"
)
async def media(video_id: str, track: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    playlist = await _playlist(bus, tenant, video_id)
    if track == topology.AUDIO_TRACK and playlist.audio_codec:
        segments = _track_segments(playlist.audio_segments, track)
    elif any(r.name == track for r in playlist.renditions):
        segments = _track_segments(playlist.segments, track)
    else:
        raise ApiError(404, "not_found", f"video {video_id} has no HLS track {track!r}")
    text = hls.media_playlist(segments, ended=playlist.status == "ready", query=_query(request))
    return _playlist_response(request, text, playlist)


@router.get_and_head(
    "/{track}/init.mp4", responses=schemas.INIT_SEGMENT, summary="CMAF init segment of a rendition or the audio"
)
async def init_segment(video_id: str, track: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    await _live_video(bus, tenant, video_id, track)
    return await serve(bus, request, topology.init_key(tenant, video_id, track), "video/mp4", cache=FRAGMENT_CACHE)


@router.get_and_head("/{track}/{segment}.m4s", responses=schemas.MEDIA_SEGMENT, summary="CMAF fragment of one segment")
async def fragment(video_id: str, track: str, segment: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    if not (segment.isascii() and segment.isdigit() and len(segment) <= 6):
        raise ApiError(404, "not_found", f"no segment {segment!r}")
    await _live_video(bus, tenant, video_id, track)
    key = topology.segment_key(tenant, video_id, track, int(segment))
    return await serve(bus, request, key, "video/iso.segment", cache=FRAGMENT_CACHE)


async def _playlist(bus: Bus, tenant: str, video_id: str) -> Playlist:
    check_video_id(video_id)
    playlist = await bus.request(topology.RPC_CATALOG_PLAYLIST, GetPlaylist(tenant=tenant, video_id=video_id), Playlist)
    if not playlist.playable:
        if playlist.status in ("failed", "deleted"):  # for good
            why = "it failed" if playlist.status == "failed" else "it was deleted"
            raise ApiError(404, "not_found", f"video {video_id} is not playable: {why}")
        raise ApiError(
            404, "not_found", f"video {video_id} is not playable (yet): its first segments are still encoding"
        )
    return playlist


async def _live_video(bus: Bus, tenant: str, video_id: str, track: str) -> None:
    """A fragment is served only for a video of this tenant that is not deleted."""
    if not TRACK.match(track):
        raise ApiError(404, "not_found", f"video {video_id} has no HLS track {track!r}")
    video = await fetch_video(bus, tenant, video_id)
    if video.status == "deleted":
        raise ApiError(404, "not_found", f"video {video_id} was deleted")


def _track_segments(segments, track: str) -> list[hls.Segment]:
    return [hls.Segment(s.index, s.duration, s.sizes.get(track, 0)) for s in segments if track in s.sizes]


def _query(request: Request) -> str:
    """`?token=...` when the playlist was fetched with a token (not with the header)."""
    token = request.query_params.get("token")
    if token and "authorization" not in request.headers:
        return "?" + urlencode({"token": token})
    return ""


def _playlist_response(request: Request, text: str, playlist: Playlist) -> Response:
    cache = READY_PLAYLIST_CACHE if playlist.status == "ready" else "no-cache"
    body = b"" if request.method == "HEAD" else text.encode()
    headers = {"Cache-Control": cache, "Content-Length": str(len(text.encode()))}
    return Response(body, media_type=hls.PLAYLIST_TYPE, headers=headers)

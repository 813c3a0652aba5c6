"""HLS playlists as a player's parser reads them (the `m3u8` package)."""

from __future__ import annotations

import m3u8
import pytest

from services.gateway.hls import Segment, Variant, bandwidths, master_playlist, media_playlist

SEGS = [Segment(0, 6.0, 600_000), Segment(1, 6.0, 1_200_000), Segment(2, 2.5, 100_000)]
AUDIO = [Segment(0, 6.005, 96_000), Segment(1, 6.005, 96_000), Segment(2, 2.49, 40_000)]


def test_media_playlist_of_a_ready_video_is_vod_with_exact_durations_and_an_end():
    text = media_playlist(SEGS, ended=True)
    pl = m3u8.loads(text)
    assert pl.version == 7 and pl.playlist_type == "vod" and pl.is_endlist
    assert pl.segment_map[0].uri == "init.mp4"
    assert [s.uri for s in pl.segments] == ["00000.m4s", "00001.m4s", "00002.m4s"]
    assert [s.duration for s in pl.segments] == [6.0, 6.0, 2.5]
    assert pl.target_duration == 6  # every EXTINF rounded is at most the target (RFC 8216 4.3.3.1)


def test_media_playlist_while_processing_is_an_event_playlist_without_end():
    pl = m3u8.loads(media_playlist(SEGS[:1], ended=False))
    assert pl.playlist_type == "event" and not pl.is_endlist
    assert len(pl.segments) == 1


def test_target_duration_covers_a_long_last_segment():
    pl = m3u8.loads(media_playlist([Segment(0, 6.0, 1), Segment(1, 7.4, 1)], ended=True))
    assert pl.target_duration == 7
    assert all(round(s.duration) <= pl.target_duration for s in pl.segments)


def test_every_uri_carries_the_query_so_a_token_reaches_each_request():
    text = media_playlist(SEGS, ended=True, query="?token=abc")
    pl = m3u8.loads(text)
    assert pl.segment_map[0].uri == "init.mp4?token=abc"
    assert all(s.uri.endswith("?token=abc") for s in pl.segments)
    master = m3u8.loads(
        master_playlist([Variant("720p", 1280, 720, "avc1.64001f", SEGS)], audio=AUDIO, query="?token=abc")
    )
    assert master.playlists[0].uri == "720p/playlist.m3u8?token=abc"
    assert master.media[0].uri == "audio/playlist.m3u8?token=abc"


def test_master_playlist_describes_each_rendition_and_the_audio_group():
    variants = [
        Variant("1080p", 1920, 1080, "avc1.64002a", SEGS),
        Variant("360p", 640, 360, "avc1.4d401f", [Segment(s.index, s.duration, s.size // 10) for s in SEGS]),
    ]
    pl = m3u8.loads(master_playlist(variants, audio=AUDIO, frame_rate=29.97))
    assert pl.is_variant
    assert [m.type for m in pl.media] == ["AUDIO"] and pl.media[0].group_id == "audio"
    top, low = pl.playlists
    assert top.stream_info.resolution == (1920, 1080) and low.stream_info.resolution == (640, 360)
    assert top.stream_info.codecs == "avc1.64002a,mp4a.40.2" and top.stream_info.audio == "audio"
    assert top.stream_info.frame_rate == pytest.approx(29.97)
    # the peak is segment 1: (1.2 MB + 96 kB) * 8 / 6 s
    assert top.stream_info.bandwidth == pytest.approx((1_200_000 + 96_000) * 8 / 6.0, abs=1)
    total = sum(s.size for s in SEGS) + sum(a.size for a in AUDIO)
    assert top.stream_info.average_bandwidth == pytest.approx(total * 8 / 14.5, abs=1)
    assert low.stream_info.bandwidth < top.stream_info.bandwidth


def test_a_silent_video_has_no_audio_group():
    pl = m3u8.loads(master_playlist([Variant("240p", 320, 240, "avc1.4d401e", SEGS)]))
    assert pl.media == [] or len(pl.media) == 0
    assert pl.playlists[0].stream_info.codecs == "avc1.4d401e" and pl.playlists[0].stream_info.audio is None


def test_bandwidth_of_no_segment_is_zero():
    assert bandwidths([], {}) == (0, 0)

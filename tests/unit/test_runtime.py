"""The runtime's pure parts: configuration, contracts, id layout, auth, range and SSE framing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from services import provision
from services.gateway.auth import ApiKeys
from services.gateway.media import RangeNotSatisfiable, event_name, parse_range, sse
from services.gateway.settings import GatewaySettings
from services.gateway.uploads import MultipartFile, accepted, new_video_id
from services.pipeline.settings import PipelineSettings
from services.transcoder.settings import TranscoderSettings
from services.up import nats_config
from shared import contracts, topology
from shared.consumer import backoff
from shared.declaration import matches
from shared.settings import ConfigError, Settings


def test_settings_defaults_and_parsing(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# mounted secret\ncarol:k3\n")
    s = GatewaySettings.load(
        {
            "VIDMESH_API_KEYS": "alice:k1, bob:k2",
            "VIDMESH_API_KEYS_FILE": str(keys),
            "VIDMESH_REPLICAS": "3",
            "VIDMESH_MAX_UPLOAD_BYTES": "1000",
        }
    )
    assert s.api_keys == {"k1": "alice", "k2": "bob", "k3": "carol"}
    assert s.replicas == 3 and s.max_upload_bytes == 1000
    d = Settings.load({})
    assert d.nats_url is None and d.nats_port == 4222 and d.http_port == 8080
    assert d.tombstone_ttl_s == d.events_max_age_s + 24 * 3600
    assert TranscoderSettings.load({}).transcode_preset == "veryfast"
    p = PipelineSettings.load({})
    assert p.chunk_s == 6.0 and p.segment_s == 6.0
    cut = PipelineSettings.load({"VIDMESH_CHUNK_S": "4", "VIDMESH_SEGMENT_S": "2"})
    assert cut.chunk_s == 4.0 and cut.segment_s == 2.0
    assert p.max_width == 4096 and p.max_duration_s == 3 * 3600
    assert Settings.load({"VIDMESH_ALPHA_BACKGROUND": "#ff8000"}).alpha_background == (255, 128, 0)
    assert Settings.load({"VIDMESH_HTTP_PORT": ""}).http_port == 8080, "empty means the default, as unset does"


@pytest.mark.parametrize(
    "settings, env",
    [
        (Settings, {"VIDMESH_REPLICAS": "2"}),
        (Settings, {"VIDMESH_HTTP_PORT": "eighty"}),
        (Settings, {"VIDMESH_ALPHA_BACKGROUND": "white"}),
        (GatewaySettings, {"VIDMESH_API_KEYS": "no-colon"}),
        (GatewaySettings, {"VIDMESH_API_KEYS": "bad tenant:k"}),
        (GatewaySettings, {"VIDMESH_QUOTA_MAX_BYTES": "-1"}),
        (PipelineSettings, {"VIDMESH_CHUNK_S": "5", "VIDMESH_SEGMENT_S": "2"}),  # chunks must end on segment boundaries
        (PipelineSettings, {"VIDMESH_SEGMENT_S": "0"}),
    ],
)
def test_bad_settings_name_the_variable(settings, env):
    with pytest.raises(ConfigError) as err:
        settings.load(env)
    assert any(name in str(err.value) for name in env)


def test_contracts_round_trip_with_their_tag():
    event = contracts.VideoReady(video_id="v1", tenant="t")
    raw = contracts.encode(event)
    assert b'"type":"pipeline.video_ready.v1"' in raw
    assert contracts.decoder(contracts.Event).decode(raw) == event


def test_older_consumers_read_newer_messages():
    """A newer producer may add fields: they are ignored, not refused."""
    raw = b'{"type":"pipeline.video_ready.v1","video_id":"v","tenant":"t","added_in_v2":42}'
    assert contracts.decoder(contracts.Event).decode(raw) == contracts.VideoReady(video_id="v", tenant="t")


def test_unknown_message_type_is_a_decode_error():
    with pytest.raises(msgspec.ValidationError):
        contracts.decoder(contracts.Event).decode(b'{"type":"someone.else.v9","video_id":"v","tenant":"t"}')


def test_every_message_type_has_one_subject_and_no_stream_captures_rpc():
    streams = provision.streams(1, 60)
    captured = [s for cfg in streams for s in cfg.subjects]
    for rpc in (topology.RPC_CATALOG_GET, topology.RPC_CATALOG_LIST, topology.RPC_PIPELINE_PROBE):
        assert not any(matches(pattern, rpc) for pattern in captured), rpc
    event = contracts.VideoReady(video_id="v1", tenant="acme")
    subject = topology.subject_for(event)
    assert subject == "pipeline.evt.video_ready.acme.v1"
    assert matches(topology.video_events_filter("acme", "v1"), subject)
    assert sum(matches(p, subject) for p in captured) == 1


def test_video_ids_sort_by_creation_and_are_unguessable():
    ids = [new_video_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(len(i) == 26 and i.isalnum() for i in ids)
    prefixes = [i[:10] for i in ids]  # 48-bit millisecond prefix; the tail is random
    assert prefixes == sorted(prefixes)
    assert len({i[10:] for i in ids}) == 200
    earlier = new_video_id()
    asyncio.run(asyncio.sleep(0.002))
    assert new_video_id() > earlier


def test_api_keys_map_to_tenants():
    keys = ApiKeys({"k1": "alice", "k2": "bob"})
    assert keys.tenant_for("Bearer k1") == "alice"
    assert keys.tenant_for("bearer k2") == "bob"
    assert keys.tenant_for("Bearer k3") is None
    assert keys.tenant_for("Basic k1") is None
    assert keys.tenant_for(None) is None
    assert "k1" not in repr(keys.__dict__)  # only digests are kept


@pytest.mark.parametrize(
    "header,expected",
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-200", (90, 99)),
        (None, None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_sse_framing():
    assert sse("video_ready", b'{"a":1}', "7") == b'event: video_ready\nid: 7\ndata: {"a":1}\n\n'
    assert event_name("transcoder.chunk_progress.v1") == "chunk_progress"
    assert event_name("transcoder.rendition_stitched.v1") == "rendition_stitched"


def test_accepted_content_types():
    assert (
        accepted("video/mp4") and accepted("application/octet-stream") and accepted("multipart/form-data; boundary=x")
    )
    assert not accepted("text/plain") and not accepted(None) and not accepted("application/x-www-form-urlencoded")


def test_multipart_streams_only_the_file_part():
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + b"V" * 5000 + b"\r\n--XyZ--\r\n"
    )

    async def pieces():
        for i in range(0, len(body), 333):  # split at awkward places
            yield body[i : i + 333]

    async def collect():
        part = MultipartFile("multipart/form-data; boundary=XyZ")
        data = b"".join([p async for p in part.stream(pieces())])
        return part, data

    part, data = asyncio.run(collect())
    assert data == b"V" * 5000
    assert part.found and part.filename == "a.mp4" and part.content_type == "video/mp4"


def test_backoff_grows_and_is_capped():
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(30) == 60


def test_embedded_nats_config_fsyncs_every_write(tmp_path):
    text = nats_config(tmp_path, 4222, 8222)
    assert "sync_interval: always" in text
    assert "listen: 127.0.0.1:4222" in text and str(tmp_path.resolve()) in text

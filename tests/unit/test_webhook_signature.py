"""Webhook signing and verification, the outbound address guard, and the pure parts of the
scheduler (schedule settings, retention cutoff, usage counts)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services import mesh, provision
from services.notifier import outbound
from services.notifier.settings import NotifierSettings
from services.notifier.signature import SignatureError, parse, sign, verify
from services.scheduler import jobs, schedules
from services.scheduler.settings import SchedulerSettings
from shared import topology
from shared.contracts import Rendition, SourceInfo, Video
from shared.declaration import matches
from shared.settings import ConfigError

SECRET = "whsec_test-secret"
BODY = b'{"id":"evt_1","type":"video.ready","data":{"video":{"id":"v1"}}}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, BODY, header, now=1_700_000_010) == 1_700_000_000


@pytest.mark.parametrize(
    "secret, body, now",
    [
        ("whsec_other", BODY, 1_700_000_000),  # wrong secret
        (SECRET, BODY + b" ", 1_700_000_000),  # body changed (even by re-serialising)
        (SECRET, BODY, 1_700_000_000 + 301),  # replayed too late
        (SECRET, BODY, 1_700_000_000 - 301),  # from the future
    ],
)
def test_a_wrong_secret_changed_body_or_stale_timestamp_is_refused(secret, body, now):
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    with pytest.raises(SignatureError):
        verify(secret, body, header, now=now)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=123", "t=abc,v1=00", "garbage"])
def test_malformed_headers_are_refused(header):
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=123)


def test_any_of_several_signatures_may_match_for_secret_rotation():
    good = sign(SECRET, BODY, timestamp=1000).split("v1=")[1]
    header = f"t=1000,v1={'0' * 64},v1={good}"
    assert parse(header) == (1000, ["0" * 64, good])
    assert verify(SECRET, BODY, header, now=1000) == 1000


@pytest.mark.parametrize(
    "address, refused",
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata: link-local
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("224.0.0.1", True),
        ("93.184.215.14", False),
        ("2606:4700::1111", False),
    ],
)
def test_the_address_guard(address, refused):
    assert (outbound.forbidden(address) is not None) == refused


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "http://", "https://user:pw@example.com/", "http://example.com/#frag", "x" * 3000, ""],
)
def test_unusable_webhook_urls_are_refused(url):
    with pytest.raises(outbound.InvalidUrl):
        outbound.check_url(url)


async def test_loopback_is_refused_unless_allowed_and_the_request_goes_to_the_checked_address():
    with pytest.raises(outbound.Refused):
        await outbound.resolve("http://localhost:9/hook", allow_private=False)
    with pytest.raises(outbound.Refused):
        await outbound.resolve("http://[::1]:9/hook", allow_private=False)
    target = await outbound.resolve("http://127.0.0.1:8123/hook?x=1", allow_private=True)
    assert target.url == "http://127.0.0.1:8123/hook?x=1"
    assert target.host_header == "127.0.0.1:8123" and target.sni is None


def test_schedule_settings_defaults_overrides_and_errors():
    s = SchedulerSettings.load({})
    assert s.schedules == {
        "retention": "0 0 3 * * *",
        "redrive": "@every 1m",
        "usage_report": "0 5 0 * * *",
        "upload_expiry": "@every 5m",
    }
    assert s.retention_days == 0 and not NotifierSettings.load({}).webhook_allow_private
    s = SchedulerSettings.load(
        {
            "VIDMESH_SCHEDULE_REDRIVE": "@every 30s",
            "VIDMESH_SCHEDULE_USAGE_REPORT": "off",
            "VIDMESH_RETENTION_DAYS": "30",
            "VIDMESH_RETENTION_DAYS_BY_TENANT": "acme:7, bob:0",
        }
    )
    assert s.schedules["redrive"] == "@every 30s" and s.schedules["usage_report"] == "off"
    assert s.retention_days_by_tenant == {"acme": 7.0, "bob": 0.0}
    assert NotifierSettings.load({"VIDMESH_WEBHOOK_ALLOW_PRIVATE": "1"}).webhook_allow_private
    wanted, off = schedules.configured(s)
    assert {w.name for w in wanted} == {"retention", "redrive", "upload_expiry"} and off == ["usage_report"]
    assert next(w for w in wanted if w.name == "redrive").headers == {
        "Nats-Schedule": "@every 30s",
        "Nats-Schedule-Target": "pipeline.cmd.tick.redrive",  # the pipeline re-drives its own jobs
        "Nats-Schedule-TTL": "150s",
    }
    for settings, env in (
        (SchedulerSettings, {"VIDMESH_SCHEDULE_RETENTION": "0 3 * * *"}),  # 5 fields: the server wants 6
        (SchedulerSettings, {"VIDMESH_SCHEDULE_REDRIVE": "@every soon"}),
        (SchedulerSettings, {"VIDMESH_RETENTION_DAYS_BY_TENANT": "acme"}),
        (NotifierSettings, {"VIDMESH_WEBHOOK_ALLOW_PRIVATE": "maybe"}),
        (NotifierSettings, {"VIDMESH_WEBHOOK_MAX_ATTEMPTS": "0"}),
    ):
        with pytest.raises(ConfigError) as err:
            settings.load(env)
        assert next(iter(env)) in str(err.value)


def test_tick_ttl_covers_a_few_intervals_within_bounds():
    assert schedules.tick_ttl("@every 1s") == 60
    assert schedules.tick_ttl("@every 5m") == 1500
    assert schedules.tick_ttl("@every 2h") == 3600
    assert schedules.tick_ttl("0 0 3 * * *") == 3600
    assert schedules.every_seconds("@every 1m30s") == 90


def _video(vid: str, created_at: float, duration: float = 10.0, sizes=(1000, 500)) -> Video:
    source = SourceInfo(size=sizes[0], duration=duration)
    rendition = Rendition(name="240p", width=320, height=240, url="u", size=sizes[1], duration=duration)
    return Video(
        id=vid, status="ready", created_at=created_at, updated_at=created_at, source=source, renditions=[rendition]
    )


def test_retention_cutoff_and_per_tenant_days():
    s = SchedulerSettings.load({"VIDMESH_RETENTION_DAYS": "30", "VIDMESH_RETENTION_DAYS_BY_TENANT": "acme:7,bob:0"})
    assert (
        jobs.retention_days(s, "acme") == 7 and jobs.retention_days(s, "bob") == 0 and jobs.retention_days(s, "x") == 30
    )
    now = 100 * 86400.0
    assert jobs.expired(_video("a", now - 8 * 86400), now, 7)
    assert not jobs.expired(_video("b", now - 6 * 86400), now, 7)
    assert not jobs.expired(_video("c", 0.0), now, 0)  # 0 days: kept forever


def test_usage_counts_the_previous_utc_day():
    day, start, end = jobs.report_day(86400 * 3 + 300)  # 00:05 on day 3
    assert (day, start, end) == ("1970-01-03", 86400 * 2, 86400 * 3)
    videos = [_video("new", start + 10), _video("old", start - 10, duration=4.0)]
    assert jobs.usage(videos, start, end) == {
        "videos": 2,
        "videos_created": 1,
        "seconds_transcoded": 10.0,
        "bytes_stored": 3000,
    }


def test_the_new_subjects_land_in_exactly_one_stream_and_no_stream_captures_rpc():
    streams = {cfg.name: cfg.subjects for cfg in provision.streams(1, 60)}
    captured = [(name, s) for name, subjects in streams.items() for s in subjects]
    rpcs = [v for k, v in vars(topology).items() if k.startswith("RPC_WEBHOOK_")]
    assert len(rpcs) == 5
    for rpc in rpcs:
        assert not any(matches(pattern, rpc) for _, pattern in captured), rpc
    for subject, stream in (
        (topology.schedule_subject("retention"), topology.SCHEDULES),
        (topology.tick_subject("retention"), topology.SCHEDULES),
        (topology.tick_subject("redrive"), topology.SCHEDULES),
        (topology.usage_subject("acme", "2030-01-01"), topology.REPORTS),
        ("notifier.cmd.deliver_webhook.acme.v1", topology.TASKS_WEBHOOK),
    ):
        assert [name for name, pattern in captured if matches(pattern, subject)] == [stream], subject
    specs = {(c.stream, c.durable) for c in mesh.consumers()}
    assert {("SCHEDULES", "scheduler"), ("EVENTS", "notifier"), ("TASKS_WEBHOOK", "notifier")} <= specs


def test_each_tick_is_taken_by_one_consumer_of_the_service_that_runs_its_job():
    """SCHEDULES is a work queue: a tick goes to exactly one consumer. The pipeline takes the
    ticks of the jobs it runs over its own records (re-drive), the scheduler every other."""
    from services.pipeline import service as pipeline
    from services.scheduler import service as scheduler

    ticks = [c for c in mesh.consumers() if c.stream == topology.SCHEDULES]

    def takers(name: str) -> list[str]:
        return [c.durable for c in ticks if any(matches(f, topology.tick_subject(name)) for f in c.filters)]

    assert set(pipeline.SCHEDULED_JOBS) == topology.PIPELINE_SCHEDULES == {"redrive"}
    for name in topology.PIPELINE_SCHEDULES:
        assert takers(name) == ["pipeline"], name
        assert name in scheduler.DESCRIPTIONS and name not in scheduler.JOBS  # declared, not run, there
    for name in (*scheduler.JOBS, "not_a_job"):  # an unknown schedule's ticks are the scheduler's to refuse
        assert takers(name) == ["scheduler"], name
    assert set(SchedulerSettings.load({}).schedules) <= set(scheduler.JOBS) | topology.PIPELINE_SCHEDULES

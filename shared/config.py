"""Configuration: every environment variable the mesh reads, parsed in this one place."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# hls.js as `make install` puts it (`npm ci` in web/); an image sets VIDMESH_HLSJS_DIR.
HLSJS_DIR = Path(__file__).resolve().parents[1] / "web" / "node_modules" / "hls.js" / "dist"


class ConfigError(ValueError):
    pass


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str | None = None  # None: `vidmesh up` starts an embedded server
    nats_user: str | None = None
    nats_password: str | None = None
    replicas: int = 1
    data_dir: Path = Path(".vidmesh")
    nats_port: int = 4222
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    api_keys: dict[str, str] = {}  # key -> tenant
    max_upload_bytes: int = 4 * 1024**3
    max_width: int = 4096
    max_height: int = 4096
    max_duration_s: float = 3 * 3600.0
    transcode_preset: str = "veryfast"
    x264_threads: int = 0  # frame threads per rung; 0: the CPUs this process may use (cgroup quota, affinity)
    alpha_background: tuple[int, int, int] = (0, 0, 0)  # what transparent pixels become (r, g, b)
    segment_s: float = 6.0  # HLS segment duration; every rung has an IDR frame at each boundary
    chunk_s: float = 6.0  # timeline per chunk task; a multiple of segment_s
    tmp_dir: str | None = None
    log_level: str = "INFO"
    events_max_age_s: float = 7 * 24 * 3600.0
    tombstone_ttl_s: float = 8 * 24 * 3600.0  # a deleted video's record expires (default: events max age + 1 day)
    task_max_deliver: int = 5
    task_ack_wait_s: float = 30.0
    worker_concurrency: int = 1
    drain_timeout_s: float = 20.0
    transcoder_procs: int = 2  # `vidmesh up` only: competing transcoder processes
    max_backlog: int = 500  # transcode tasks (chunks of 6 s: ~50 min of video) waiting before uploads get 429
    log_events_level: str = "WARNING"  # log records at or above this go on the bus
    metrics_interval_s: float = 10.0  # how often each service publishes a metric sample
    monitor_interval_s: float = 5.0  # how often the monitor evaluates its rules
    alert_lag: int = 100  # consumer_lag fires above this many waiting messages
    alert_failure_rate: float = 0.5  # task_failure_rate fires above this share of failures...
    alert_failure_min: int = 5  # ...once at least this many tasks ended in the window
    alert_window_s: float = 300.0
    alert_silent_s: float = 60.0  # service_silent fires when a service sends nothing this long
    retry_after_s: int = 5
    hlsjs_dir: Path = HLSJS_DIR  # the dashboard's HLS player, hls.min.js and hls.worker.js
    # --- scheduled jobs and webhooks; parsed by scheduling_settings() -------------
    retention_days: float = 0.0  # 0: keep videos forever
    retention_days_by_tenant: dict[str, float] = {}  # tenant -> days (0: forever)
    stuck_after_s: float = 600.0
    redrive_max_attempts: int = 3
    schedules: dict[str, str] = {}  # job name -> Nats-Schedule expression, or "off"
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 10.0  # first retry delay; doubles each attempt, capped at 1 h
    webhook_keys: tuple[str, ...] = ()  # seal webhook secrets at rest; the first seals, all open
    # --- quotas and hostile input; parsed by security_settings() -----------------
    quota_max_processing: int = 0  # videos processing at once per tenant; 0: no limit
    quota_max_bytes: int = 0  # bytes stored per tenant (sources, renditions, thumbnails); 0: no limit
    quota_max_processing_by_tenant: dict[str, int] = {}
    quota_max_bytes_by_tenant: dict[str, int] = {}
    max_json_bytes: int = 64 * 1024  # JSON request bodies (webhooks, ...)
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024  # all request headers together
    max_query_bytes: int = 2048
    max_streams: int = 16  # streams in an upload (video, audio, subtitles, data...)
    containers: tuple[str, ...] = ()  # demuxers an upload may use; () = the default allow-list
    probe_timeout_s: float = 30.0  # wall-clock bound of probing one upload
    probe_max_memory_mb: int = 1024  # address-space bound of the probe subprocess
    probe_window_mb: int = 8  # first and last MiB of an upload fetched for a first probe
    # --- resumable uploads (tus) and direct uploads; parsed by upload_settings() ---
    upload_expiry_s: float = 24 * 3600.0  # an incomplete resumable upload expires after this
    direct_upload_expiry_s: float = 3600.0  # default lifetime of a one-time direct-upload URL
    tusjs_dir: Path = Path(__file__).resolve().parents[1] / "web" / "node_modules" / "tus-js-client" / "dist"


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def parse_api_keys(text: str) -> dict[str, str]:
    """`tenant:key,tenant:key` (commas or newlines) -> {key: tenant}."""
    keys: dict[str, str] = {}
    for item in _items(text):
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key or not TENANT_RE.match(tenant):
            raise ConfigError(f"API key entry must be tenant:key with tenant in [A-Za-z0-9_-], got {tenant!r}")
        keys[key] = tenant
    return keys


def load(env: dict | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    keys = parse_api_keys(env.get("VIDMESH_API_KEYS", ""))
    keys_file = env.get("VIDMESH_API_KEYS_FILE")
    if keys_file:
        try:
            keys.update(parse_api_keys(Path(keys_file).read_text()))
        except OSError as exc:
            raise ConfigError(f"VIDMESH_API_KEYS_FILE: {exc}") from None
    replicas = _int(env, "VIDMESH_REPLICAS", 1)
    if replicas not in (1, 3, 5):
        raise ConfigError("VIDMESH_REPLICAS must be 1, 3 or 5")
    events_max_age = _float(env, "VIDMESH_EVENTS_MAX_AGE_S", 7 * 24 * 3600.0)
    # A tombstone outliving every event of its video: no late event can bring the video back.
    tombstone_ttl = _float(env, "VIDMESH_TOMBSTONE_TTL_S", events_max_age + 24 * 3600.0)
    if tombstone_ttl < 1:
        raise ConfigError("VIDMESH_TOMBSTONE_TTL_S must be >= 1 (the server's smallest message TTL)")
    segment_s = _float(env, "VIDMESH_SEGMENT_S", 6.0)
    chunk_s = _float(env, "VIDMESH_CHUNK_S", 6.0)
    if not 0.5 <= segment_s <= 60:
        raise ConfigError("VIDMESH_SEGMENT_S must be between 0.5 and 60 seconds")
    per_chunk = round(chunk_s / segment_s)
    if per_chunk < 1 or abs(per_chunk * segment_s - chunk_s) > 1e-6:
        raise ConfigError("VIDMESH_CHUNK_S must be a multiple of VIDMESH_SEGMENT_S")
    return Settings(
        **scheduling_settings(env),  # see the block at the end of this file
        **security_settings(env),  # see the block at the end of this file
        **upload_settings(env),  # see the block at the end of this file
        nats_url=env.get("NATS_URL") or None,
        nats_user=env.get("NATS_USER") or None,
        nats_password=env.get("NATS_PASSWORD") or None,
        replicas=replicas,
        data_dir=Path(env.get("VIDMESH_DATA_DIR") or ".vidmesh"),
        nats_port=_int(env, "VIDMESH_NATS_PORT", 4222),
        http_host=env.get("VIDMESH_HTTP_HOST") or "127.0.0.1",
        http_port=_int(env, "VIDMESH_HTTP_PORT", 8080),
        api_keys=keys,
        max_upload_bytes=_int(env, "VIDMESH_MAX_UPLOAD_BYTES", 4 * 1024**3),
        max_width=_int(env, "VIDMESH_MAX_WIDTH", 4096),
        max_height=_int(env, "VIDMESH_MAX_HEIGHT", 4096),
        max_duration_s=_float(env, "VIDMESH_MAX_DURATION_S", 3 * 3600.0),
        transcode_preset=env.get("VIDMESH_TRANSCODE_PRESET") or "veryfast",
        x264_threads=_int(env, "VIDMESH_X264_THREADS", 0),
        alpha_background=_rgb(env, "VIDMESH_ALPHA_BACKGROUND", (0, 0, 0)),
        segment_s=segment_s,
        chunk_s=chunk_s,
        tmp_dir=env.get("VIDMESH_TMP_DIR") or None,
        log_level=(env.get("VIDMESH_LOG_LEVEL") or "INFO").upper(),
        events_max_age_s=events_max_age,
        tombstone_ttl_s=tombstone_ttl,
        task_max_deliver=_int(env, "VIDMESH_TASK_MAX_DELIVER", 5),
        task_ack_wait_s=_float(env, "VIDMESH_TASK_ACK_WAIT_S", 30.0),
        worker_concurrency=_int(env, "VIDMESH_WORKER_CONCURRENCY", 1),
        drain_timeout_s=_float(env, "VIDMESH_DRAIN_TIMEOUT_S", 20.0),
        transcoder_procs=_int(env, "VIDMESH_TRANSCODER_PROCS", 2),
        max_backlog=_int(env, "VIDMESH_MAX_BACKLOG", 500),
        log_events_level=(env.get("VIDMESH_LOG_EVENTS_LEVEL") or "WARNING").upper(),
        metrics_interval_s=_float(env, "VIDMESH_METRICS_INTERVAL_S", 10.0),
        monitor_interval_s=_float(env, "VIDMESH_MONITOR_INTERVAL_S", 5.0),
        alert_lag=_int(env, "VIDMESH_ALERT_LAG", 100),
        alert_failure_rate=_float(env, "VIDMESH_ALERT_FAILURE_RATE", 0.5),
        alert_failure_min=_int(env, "VIDMESH_ALERT_FAILURE_MIN", 5),
        alert_window_s=_float(env, "VIDMESH_ALERT_WINDOW_S", 300.0),
        alert_silent_s=_float(env, "VIDMESH_ALERT_SILENT_S", 60.0),
        retry_after_s=_int(env, "VIDMESH_RETRY_AFTER_S", 5),
        hlsjs_dir=Path(env.get("VIDMESH_HLSJS_DIR") or HLSJS_DIR),
    )


_HEX_RGB = re.compile(r"^#?([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})$")


def _rgb(env, name: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """`#rrggbb` -> (r, g, b)."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    m = _HEX_RGB.match(text)
    if m is None:
        raise ConfigError(f"{name} must be a colour #rrggbb, got {text!r}")
    return tuple(int(part, 16) for part in m.groups())


# =============================================================================================
# Scheduled jobs and webhooks
# =============================================================================================

# Server-side schedules (`Nats-Schedule`): 6-field cron (sec min hour dom month dow, UTC),
# `@every <duration>`, or a predefined `@daily`/`@hourly`/...; "off" removes the schedule.
DEFAULT_SCHEDULES = {
    "retention": "0 0 3 * * *",  # 03:00 UTC
    "redrive": "@every 1m",
    "usage_report": "0 5 0 * * *",  # 00:05 UTC: the day that just ended
    "upload_expiry": "@every 5m",  # expired resumable uploads and direct-upload URLs
}
_PREDEFINED = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def check_schedule(name: str, spec: str) -> str:
    """A schedule expression the server accepts (it checks again), or ConfigError."""
    spec = " ".join(spec.split())
    if spec == "off" or spec in _PREDEFINED:
        return spec
    if spec.startswith("@every "):
        if _DURATION.match(spec[7:]):
            return spec
    elif not spec.startswith("@") and len(spec.split(" ")) == 6:
        return spec
    raise ConfigError(
        f"VIDMESH_SCHEDULE_{name.upper()} must be a 6-field cron (sec min hour dom month dow), "
        f"'@every <duration>', one of {', '.join(_PREDEFINED)}, or 'off'; got {spec!r}"
    )


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def parse_days_by_tenant(text: str) -> dict[str, float]:
    """`acme:30,bob:7` -> {"acme": 30.0, "bob": 7.0}."""
    days: dict[str, float] = {}
    for item in _items(text):
        tenant, sep, value = item.partition(":")
        tenant = tenant.strip()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or not TENANT_RE.match(tenant) or number < 0:
            raise ConfigError(f"VIDMESH_RETENTION_DAYS_BY_TENANT entries must be tenant:days (days >= 0), got {item!r}")
        days[tenant] = number
    return days


def scheduling_settings(env: dict) -> dict:
    retention_days = _float(env, "VIDMESH_RETENTION_DAYS", 0.0)
    if retention_days < 0:
        raise ConfigError("VIDMESH_RETENTION_DAYS must be >= 0 (0 keeps videos forever)")
    schedules = {
        name: check_schedule(name, env.get(f"VIDMESH_SCHEDULE_{name.upper()}") or default)
        for name, default in DEFAULT_SCHEDULES.items()
    }
    max_attempts = _int(env, "VIDMESH_WEBHOOK_MAX_ATTEMPTS", 10)
    if not 1 <= max_attempts <= 50:
        raise ConfigError("VIDMESH_WEBHOOK_MAX_ATTEMPTS must be between 1 and 50")
    timeout = _float(env, "VIDMESH_WEBHOOK_TIMEOUT_S", 10.0)
    backoff = _float(env, "VIDMESH_WEBHOOK_BACKOFF_S", 10.0)
    stuck_after = _float(env, "VIDMESH_STUCK_AFTER_S", 600.0)
    if timeout <= 0 or backoff <= 0 or stuck_after <= 0:
        raise ConfigError("VIDMESH_WEBHOOK_TIMEOUT_S, VIDMESH_WEBHOOK_BACKOFF_S and VIDMESH_STUCK_AFTER_S must be > 0")
    return {
        "retention_days": retention_days,
        "retention_days_by_tenant": parse_days_by_tenant(env.get("VIDMESH_RETENTION_DAYS_BY_TENANT", "")),
        "stuck_after_s": stuck_after,
        "redrive_max_attempts": max(1, _int(env, "VIDMESH_REDRIVE_MAX_ATTEMPTS", 3)),
        "schedules": schedules,
        "webhook_allow_private": _bool(env, "VIDMESH_WEBHOOK_ALLOW_PRIVATE", False),
        "webhook_timeout_s": timeout,
        "webhook_max_attempts": max_attempts,
        "webhook_backoff_s": backoff,
        "webhook_keys": webhook_keys(env),
    }


def webhook_keys(env: dict) -> tuple[str, ...]:
    """VIDMESH_WEBHOOK_KEYS (comma-separated), then VIDMESH_WEBHOOK_KEYS_FILE (one per line,
    `#` comments). Their form (32 bytes, base64url) is checked where they are used."""
    text = env.get("VIDMESH_WEBHOOK_KEYS", "")
    path = env.get("VIDMESH_WEBHOOK_KEYS_FILE")
    if path:
        try:
            text += "\n" + Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"VIDMESH_WEBHOOK_KEYS_FILE: {exc}") from None
    return tuple(_items(text))


def _items(text: str):
    """Comma- or newline-separated items; a line starting with `#` is a comment."""
    for line in text.splitlines():
        if not line.strip().startswith("#"):
            yield from (item.strip() for item in line.split(",") if item.strip())


# =============================================================================================
# Quotas and hostile input
# =============================================================================================

# FFmpeg demuxer names an upload may be read with (a token of container.format.name, e.g.
# "mov,mp4,m4a,3gp,3g2,mj2"). Playlists and other indirections (hls, concat, ...) are not
# here on purpose: they make the demuxer open further files.
# Animated images (GIF, APNG, animated WebP) become silent videos; still images are refused.
DEFAULT_CONTAINERS = (
    "mov", "mp4", "matroska", "webm", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "mxf", "gif", "apng", "webp",
)


def parse_ints_by_tenant(name: str, text: str) -> dict[str, int]:
    """`acme:10,bob:2` -> {"acme": 10, "bob": 2} (values >= 0; 0: no limit)."""
    found: dict[str, int] = {}
    for item in _items(text):
        tenant, sep, value = item.partition(":")
        tenant, value = tenant.strip(), value.strip()
        if not sep or not TENANT_RE.match(tenant) or not value.isdigit():
            raise ConfigError(f"{name} entries must be tenant:number (number >= 0), got {item!r}")
        found[tenant] = int(value)
    return found


def security_settings(env: dict) -> dict:
    values = {
        "quota_max_processing": _int(env, "VIDMESH_QUOTA_MAX_PROCESSING", 0),
        "quota_max_bytes": _int(env, "VIDMESH_QUOTA_MAX_BYTES", 0),
        "max_json_bytes": _int(env, "VIDMESH_MAX_JSON_BYTES", 64 * 1024),
        "max_header_count": _int(env, "VIDMESH_MAX_HEADER_COUNT", 100),
        "max_header_bytes": _int(env, "VIDMESH_MAX_HEADER_BYTES", 16 * 1024),
        "max_query_bytes": _int(env, "VIDMESH_MAX_QUERY_BYTES", 2048),
        "max_streams": _int(env, "VIDMESH_MAX_STREAMS", 16),
        "probe_timeout_s": _float(env, "VIDMESH_PROBE_TIMEOUT_S", 30.0),
        "probe_max_memory_mb": _int(env, "VIDMESH_PROBE_MAX_MEMORY_MB", 1024),
        "probe_window_mb": _int(env, "VIDMESH_PROBE_WINDOW_MB", 8),
    }
    for key, value in values.items():
        if value < 0 or (value == 0 and not key.startswith("quota_")):
            raise ConfigError(f"VIDMESH_{key.upper()} must be > 0 (quotas: >= 0, 0 for no limit), got {value}")
    containers = tuple(c.strip().lower() for c in (env.get("VIDMESH_CONTAINERS") or "").split(",") if c.strip())
    return {
        **values,
        "quota_max_processing_by_tenant": parse_ints_by_tenant(
            "VIDMESH_QUOTA_MAX_PROCESSING_BY_TENANT", env.get("VIDMESH_QUOTA_MAX_PROCESSING_BY_TENANT", "")
        ),
        "quota_max_bytes_by_tenant": parse_ints_by_tenant(
            "VIDMESH_QUOTA_MAX_BYTES_BY_TENANT", env.get("VIDMESH_QUOTA_MAX_BYTES_BY_TENANT", "")
        ),
        "containers": containers or DEFAULT_CONTAINERS,
    }


# =============================================================================================
# Resumable uploads (tus) and direct uploads
# =============================================================================================


def upload_settings(env: dict) -> dict:
    expiry = _float(env, "VIDMESH_UPLOAD_EXPIRY_S", 24 * 3600.0)
    direct = _float(env, "VIDMESH_DIRECT_UPLOAD_EXPIRY_S", 3600.0)
    if expiry < 1 or direct < 1:
        raise ConfigError("VIDMESH_UPLOAD_EXPIRY_S and VIDMESH_DIRECT_UPLOAD_EXPIRY_S must be >= 1 second")
    found = {"upload_expiry_s": expiry, "direct_upload_expiry_s": min(direct, expiry)}
    if env.get("VIDMESH_TUSJS_DIR"):  # tus-js-client, the dashboard's uploader (an image sets it)
        found["tusjs_dir"] = Path(env["VIDMESH_TUSJS_DIR"])
    return found

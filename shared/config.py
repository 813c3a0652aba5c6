"""Configuration: every environment variable the mesh reads, parsed in this one place."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
    transcode_crf: int = 23
    tmp_dir: str | None = None
    log_level: str = "INFO"
    events_max_age_s: float = 7 * 24 * 3600.0
    task_max_deliver: int = 5
    task_ack_wait_s: float = 30.0
    worker_concurrency: int = 1
    drain_timeout_s: float = 20.0
    transcoder_procs: int = 2  # `vidmesh up` only: competing transcoder processes
    max_backlog: int = 200  # transcode tasks waiting before uploads get 429
    retry_after_s: int = 5


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
    for item in re.split(r"[,\n]", text):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
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
    return Settings(
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
        transcode_crf=_int(env, "VIDMESH_TRANSCODE_CRF", 23),
        tmp_dir=env.get("VIDMESH_TMP_DIR") or None,
        log_level=(env.get("VIDMESH_LOG_LEVEL") or "INFO").upper(),
        events_max_age_s=_float(env, "VIDMESH_EVENTS_MAX_AGE_S", 7 * 24 * 3600.0),
        task_max_deliver=_int(env, "VIDMESH_TASK_MAX_DELIVER", 5),
        task_ack_wait_s=_float(env, "VIDMESH_TASK_ACK_WAIT_S", 30.0),
        worker_concurrency=_int(env, "VIDMESH_WORKER_CONCURRENCY", 1),
        drain_timeout_s=_float(env, "VIDMESH_DRAIN_TIMEOUT_S", 20.0),
        transcoder_procs=_int(env, "VIDMESH_TRANSCODER_PROCS", 2),
        max_backlog=_int(env, "VIDMESH_MAX_BACKLOG", 200),
        retry_after_s=_int(env, "VIDMESH_RETRY_AFTER_S", 5),
    )

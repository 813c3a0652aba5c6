"""The gateway's settings: API keys, upload limits, quotas, bounds on hostile requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import TENANT_RE, Settings, items, read_file

# The dashboard's browser packages as `make install` puts them (`npm ci` in web/); an image
# sets their directories.
NODE_MODULES = Path(__file__).resolve().parents[2] / "web" / "node_modules"


def parse_ints_by_tenant(value):
    """`acme:10,bob:2` -> {"acme": 10, "bob": 2} (values >= 0; 0: no limit)."""
    if not isinstance(value, str):
        return value
    found: dict[str, int] = {}
    for item in items(value):
        tenant, sep, number = item.partition(":")
        tenant, number = tenant.strip(), number.strip()
        if not sep or not TENANT_RE.match(tenant) or not number.isdigit():
            raise ValueError(f"entries must be tenant:number (number >= 0), got {item!r}")
        found[tenant] = int(number)
    return found


# `vidmesh up` reads the keys too (it makes a dev key when none is set): a class of their
# own, which its settings reuse.
def parse_api_keys(text: str) -> dict[str, str]:
    """`tenant:key,tenant:key` (commas or newlines) -> {key: tenant}."""
    keys: dict[str, str] = {}
    for item in items(text):
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key or not TENANT_RE.match(tenant):
            raise ValueError(f"entries must be tenant:key with tenant in [A-Za-z0-9_-], got {tenant!r}")
        keys[key] = tenant
    return keys


class ApiKeySettings(Settings):
    api_keys: Annotated[dict[str, str], NoDecode] = Field({}, repr=False)  # key -> tenant, from `tenant:key,tenant:key`
    api_keys_file: Path | None = None  # a file of `tenant:key` lines (a mounted Secret), added to api_keys

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, value):
        return parse_api_keys(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _api_keys_from_file(self) -> Self:
        if self.api_keys_file:
            text = read_file("VIDMESH_API_KEYS_FILE", self.api_keys_file)
            try:
                self.api_keys = {**self.api_keys, **parse_api_keys(text)}
            except ValueError as exc:
                raise ValueError(f"VIDMESH_API_KEYS_FILE {exc}") from None
        return self


class GatewaySettings(ApiKeySettings):
    max_upload_bytes: int = 4 * 1024**3  # larger uploads get 413
    retry_after_s: int = 5  # the Retry-After of a 429, seconds
    # Quotas per tenant (0: no limit), with per-tenant overrides `tenant:number,...`.
    quota_max_processing: int = Field(0, ge=0)  # videos processing at once
    quota_max_bytes: int = Field(0, ge=0)  # bytes stored: sources, fragments, renditions, thumbnails
    quota_max_processing_by_tenant: Annotated[dict[str, int], NoDecode] = {}
    quota_max_bytes_by_tenant: Annotated[dict[str, int], NoDecode] = {}
    # Bounds on hostile requests.
    max_json_bytes: int = Field(64 * 1024, gt=0)  # JSON request bodies (webhooks, ...)
    max_header_count: int = Field(100, gt=0)
    max_query_bytes: int = Field(2048, gt=0)
    # Resumable (tus) and direct uploads; the incomplete upload's expiry is upload_expiry_s.
    direct_upload_expiry_s: float = 3600.0  # default lifetime of a direct-upload URL, at most upload_expiry_s
    # The dashboard's HLS player (hls.min.js, hls.worker.js) and resumable uploader (tus.min.js).
    hlsjs_dir: Path = NODE_MODULES / "hls.js" / "dist"
    tusjs_dir: Path = NODE_MODULES / "tus-js-client" / "dist"

    @field_validator("quota_max_processing_by_tenant", "quota_max_bytes_by_tenant", mode="before")
    @classmethod
    def _by_tenant(cls, value):
        return parse_ints_by_tenant(value)

    @model_validator(mode="after")
    def _direct_upload_expiry(self) -> Self:
        if self.direct_upload_expiry_s < 1:
            raise ValueError("VIDMESH_DIRECT_UPLOAD_EXPIRY_S must be >= 1 second")
        self.direct_upload_expiry_s = min(self.direct_upload_expiry_s, self.upload_expiry_s)
        return self

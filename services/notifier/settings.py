"""The notifier's settings: how webhooks are delivered, and the keys sealing their secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import Settings, items, read_file

# `vidmesh up` reads the keys too (it makes a key file when none is set): a class of their
# own, which its settings reuse.


class WebhookKeySettings(Settings):
    # Keys sealing webhook secrets at rest: the first seals, all open. Their form (32 bytes,
    # base64url) is checked where they are used.
    webhook_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False)  # comma-separated
    webhook_keys_file: Path | None = None  # one key a line, `#` comments; added after webhook_keys

    @field_validator("webhook_keys", mode="before")
    @classmethod
    def _webhook_keys(cls, value):
        return tuple(items(value)) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _webhook_keys_from_file(self) -> Self:
        if self.webhook_keys_file:
            self.webhook_keys = (
                *self.webhook_keys,
                *items(read_file("VIDMESH_WEBHOOK_KEYS_FILE", self.webhook_keys_file)),
            )
        return self


class NotifierSettings(WebhookKeySettings):
    webhook_allow_private: bool = False  # True lets webhooks reach private, loopback and link-local addresses
    webhook_timeout_s: float = Field(10.0, gt=0)  # seconds one webhook request may take
    webhook_max_attempts: int = Field(10, ge=1, le=50)  # attempts before a delivery is dead-lettered
    webhook_backoff_s: float = Field(10.0, gt=0)  # seconds before the first retry; doubles each attempt, capped at 1 h

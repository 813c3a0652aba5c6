"""The notifier's settings: how webhooks are delivered, and the keys sealing their secrets."""

from __future__ import annotations

from pydantic import Field

from shared.settings import WebhookKeySettings


class NotifierSettings(WebhookKeySettings):
    webhook_allow_private: bool = False  # True lets webhooks reach private, loopback and link-local addresses
    webhook_timeout_s: float = Field(10.0, gt=0)  # seconds one webhook request may take
    webhook_max_attempts: int = Field(10, ge=1, le=50)  # attempts before a delivery is dead-lettered
    webhook_backoff_s: float = Field(10.0, gt=0)  # seconds before the first retry; doubles each attempt, capped at 1 h

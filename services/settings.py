"""The settings of `vidmesh up`, which starts the embedded NATS server and every service."""

from __future__ import annotations

from .gateway.settings import ApiKeySettings
from .notifier.settings import WebhookKeySettings


class LauncherSettings(ApiKeySettings, WebhookKeySettings):
    """The keys are read to make dev ones when none is set."""

    nats_monitor_port: int = 8222  # the embedded server's monitoring port
    transcoder_procs: int = 2  # competing transcoder processes

"""The monitor's settings: how often it evaluates its rules and where they fire."""

from __future__ import annotations

from shared.settings import Settings


class MonitorSettings(Settings):
    monitor_interval_s: float = 5.0  # seconds between evaluations of the rules
    alert_lag: int = 100  # consumer_lag fires above this many waiting messages
    alert_failure_rate: float = 0.5  # task_failure_rate fires above this share of failed tasks...
    alert_failure_min: int = 5  # ...once at least this many tasks ended in the window
    alert_window_s: float = 300.0  # the failure-rate window, seconds
    alert_silent_s: float = 60.0  # service_silent fires when a service sends nothing this many seconds

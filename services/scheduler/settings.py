"""The scheduler's settings: when its jobs run and what they keep."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import TENANT_RE, Settings, items

# Server-side schedules (`Nats-Schedule`): 6-field cron (sec min hour dom month dow, UTC),
# `@every <duration>`, or a predefined `@daily`/`@hourly`/...; "off" removes the schedule.
_PREDEFINED = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
SCHEDULE_FIELD = "schedule_"  # a field schedule_<job> is the schedule of that job


def check_schedule(spec: str) -> str:
    """A schedule expression the server accepts (it checks again), or ValueError."""
    spec = " ".join(spec.split())
    if spec == "off" or spec in _PREDEFINED:
        return spec
    if spec.startswith("@every "):
        if _DURATION.match(spec[7:]):
            return spec
    elif not spec.startswith("@") and len(spec.split(" ")) == 6:
        return spec
    raise ValueError(
        f"must be a 6-field cron (sec min hour dom month dow), '@every <duration>', "
        f"one of {', '.join(_PREDEFINED)}, or 'off'; got {spec!r}"
    )


class SchedulerSettings(Settings):
    retention_days: float = Field(0.0, ge=0)  # videos older than this are deleted; 0: kept forever
    # tenant -> days (0: forever), from `acme:30,bob:7`
    retention_days_by_tenant: Annotated[dict[str, float], NoDecode] = {}
    # When each job runs.
    schedule_retention: str = "0 0 3 * * *"  # 03:00 UTC
    schedule_redrive: str = "@every 1m"
    schedule_usage_report: str = "0 5 0 * * *"  # 00:05 UTC: the day that just ended
    schedule_upload_expiry: str = "@every 5m"  # expired resumable uploads and direct-upload URLs

    @property
    def schedules(self) -> dict[str, str]:
        """Job name -> Nats-Schedule expression, or "off"."""
        return {
            name.removeprefix(SCHEDULE_FIELD): getattr(self, name)
            for name in type(self).model_fields
            if name.startswith(SCHEDULE_FIELD)
        }

    @field_validator("schedule_retention", "schedule_redrive", "schedule_usage_report", "schedule_upload_expiry")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("retention_days_by_tenant", mode="before")
    @classmethod
    def _days_by_tenant(cls, value):
        """`acme:30,bob:7` -> {"acme": 30.0, "bob": 7.0}."""
        if not isinstance(value, str):
            return value
        days: dict[str, float] = {}
        for item in items(value):
            tenant, sep, number = item.partition(":")
            tenant = tenant.strip()
            try:
                number = float(number)
            except ValueError:
                number = -1.0
            if not sep or not TENANT_RE.match(tenant) or number < 0:
                raise ValueError(f"entries must be tenant:days (days >= 0), got {item!r}")
            days[tenant] = number
        return days

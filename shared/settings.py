"""Settings: what every process reads from its environment, each variable declared once.

`Settings` holds what the shell, the bus and the topology read in every process; a service
with settings of its own subclasses it in its folder (services/<name>/settings.py) and
names that class in `Service(..., settings=...)`. A field `foo_s` is read from
`VIDMESH_FOO_S` unless it names another variable (NATS_URL, NATS_USER, NATS_PASSWORD).
A value that does not parse stops the process with a ConfigError naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "VIDMESH_"
TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DAY_S = 24 * 3600.0


class ConfigError(ValueError):
    """A setting the process cannot start with; the message names its variable."""


def items(text: str) -> Iterator[str]:
    """Comma- or newline-separated items; a line starting with `#` is a comment."""
    for line in text.splitlines():
        if not line.strip().startswith("#"):
            yield from (item.strip() for item in line.split(",") if item.strip())


def read_file(variable: str, path: Path) -> str:
    """The text of the file a `*_FILE` variable names (a mounted Secret)."""
    try:
        return path.read_text()
    except OSError as exc:
        raise ValueError(f"{variable}: {exc}") from None


# load(env) reads this mapping instead of os.environ while it builds the settings.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("vidmesh_environ", default=None)


class _Environment(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return {
            (key if self.case_sensitive else key.lower()): value
            for key, value in env.items()
            if not (self.env_ignore_empty and value == "")
        }


class Settings(BaseSettings):
    # An empty variable means its default, as unset does.
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, populate_by_name=True)

    nats_url: str | None = Field(None, validation_alias="NATS_URL")  # None: `vidmesh up` starts an embedded server
    nats_user: str | None = Field(None, validation_alias="NATS_USER")  # None: the password `vidmesh up` generated
    nats_password: str | None = Field(None, validation_alias="NATS_PASSWORD", repr=False)
    nats_port: int = 4222  # the embedded server's client port, and the URL when NATS_URL is unset
    replicas: int = 1  # of every stream and bucket: 1, 3 or 5 NATS nodes
    data_dir: Path = Path(".vidmesh")  # the embedded server's store, its config, the dev keys and passwords
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_level: str = "INFO"
    log_events_level: str = "WARNING"  # log records at or above this go on the bus
    metrics_interval_s: float = 10.0  # seconds between the metric samples each service publishes
    drain_timeout_s: float = 20.0  # seconds a stopping service lets the tasks in hand finish
    max_header_bytes: int = Field(16 * 1024, gt=0)  # bytes of all request headers together (uvicorn's bound too)
    events_max_age_s: float = 7 * DAY_S  # seconds the events stream keeps an event
    # Seconds a deleted video's records live; None: events max age + 1 day, so a tombstone
    # outlives every event of its video and no late event can bring the video back.
    tombstone_ttl_s: float | None = None
    task_max_deliver: int = 5  # attempts of a task before it is dead-lettered
    task_ack_wait_s: float = 30.0  # seconds before a task whose worker went silent is redelivered
    worker_concurrency: int = 1  # tasks one worker process runs at once
    tmp_dir: str | None = None  # scratch space of the media workers; None: the system's temp dir
    # What transparent pixels become (r, g, b), from `#rrggbb`; transcoder and thumbnailer agree.
    alpha_background: Annotated[tuple[int, int, int], NoDecode] = (0, 0, 0)
    max_backlog: int = 500  # transcode tasks waiting before uploads get 429 (the gateway sheds, the monitor reports)
    upload_expiry_s: float = DAY_S  # seconds until an incomplete resumable upload expires
    # Re-drive of stuck videos: the scheduler's schedule fires it and the pipeline owns the jobs
    # it re-drives, so it is not one service's alone.
    stuck_after_s: float = Field(600.0, gt=0)  # seconds without job progress before a video is re-driven
    redrive_max_attempts: int = 3  # re-drives before a stuck video fails (at least 1)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings from `env` (default: the process environment); ConfigError names
        each variable that does not parse."""
        token = _ENVIRON.set(None if env is None else dict(env))
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError("; ".join(cls._problem(error) for error in exc.errors())) from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> the environment variable it is read from."""
        return {
            name: field.validation_alias if isinstance(field.validation_alias, str) else PREFIX + name.upper()
            for name, field in cls.model_fields.items()
        }

    @classmethod
    def _problem(cls, error: ErrorDetails) -> str:
        where = error["loc"][0] if error["loc"] else None
        variable = cls.variables().get(where, where) if isinstance(where, str) else where
        if error["type"] == "value_error":  # a validator's message, already saying what it wants
            text = str(error["ctx"]["error"])
            return f"{variable} {text}" if variable else text
        text = error["msg"].replace("Input should be ", "must be ", 1)
        return f"{variable} {text}, got {error['input']!r}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls)  # no .env file: compose reads that one

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value not in (1, 3, 5):
            raise ValueError("must be 1, 3 or 5")
        return value

    @field_validator("log_level", "log_events_level")
    @classmethod
    def _level(cls, value: str) -> str:
        return value.upper()

    @field_validator("alpha_background", mode="before")
    @classmethod
    def _rgb(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        m = re.match(r"^#?([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})$", value.strip())
        if m is None:
            raise ValueError(f"must be a colour #rrggbb, got {value!r}")
        return tuple(int(part, 16) for part in m.groups())

    @field_validator("redrive_max_attempts")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        return max(1, value)

    @field_validator("upload_expiry_s")
    @classmethod
    def _at_least_a_second(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be >= 1 second")
        return value

    @model_validator(mode="after")
    def _tombstone_ttl(self) -> Self:
        if self.tombstone_ttl_s is None:
            self.tombstone_ttl_s = self.events_max_age_s + DAY_S
        if self.tombstone_ttl_s < 1:
            raise ValueError("VIDMESH_TOMBSTONE_TTL_S must be >= 1 (the server's smallest message TTL)")
        return self

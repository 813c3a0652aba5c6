"""The settings classes as the tests see them: every one the code defines, the class each
service loads, and all of them in one for tests that run several services' handlers on one
bus (each service process loads only its own)."""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic_settings import BaseSettings

from services.gateway.settings import GatewaySettings
from services.monitor.settings import MonitorSettings
from services.notifier.settings import NotifierSettings
from services.pipeline.settings import PipelineSettings
from services.scheduler.settings import SchedulerSettings
from services.transcoder.settings import TranscoderSettings

ROOT = Path(__file__).resolve().parents[1]


class MeshSettings(
    GatewaySettings, PipelineSettings, TranscoderSettings, SchedulerSettings, NotifierSettings, MonitorSettings
):
    pass


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class the code defines: shared/settings.py, services/settings.py (the
    launcher's) and services/<name>/settings.py."""
    files = [ROOT / "shared" / "settings.py", ROOT / "services" / "settings.py"]
    files += sorted((ROOT / "services").glob("*/settings.py"))
    found = []
    for path in files:
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
        ]
    return found


def variables() -> dict[str, type[BaseSettings]]:
    """Every environment variable a settings class reads -> the first class declaring it."""
    found: dict[str, type[BaseSettings]] = {}
    for cls in settings_classes():
        for variable in cls.variables().values():
            found.setdefault(variable, cls)
    return found


def service_settings(name: str) -> type[BaseSettings]:
    """The class `vidmesh run <name>` loads."""
    return importlib.import_module(f"services.{name}.service").service.settings_class

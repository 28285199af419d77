"""The bundle's settings (monitoring/config.yml): thresholds, durations and their reasons."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SEVERITIES = ("critical", "warning", "info")
"""The severities the bundle uses, most urgent first (see docs/alerts.md)."""

_DURATION = re.compile(r"^(?:0s|(?:\d+[hms])+)$")


class SettingsError(ValueError):
    """config.yml is missing a key or has a value of the wrong kind."""


@dataclass(frozen=True, slots=True)
class Reasoned:
    """A setting's value with the reason it has that value."""

    value: str
    why: str


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """One alert's severity, `for` duration and thresholds."""

    severity: str
    for_: Reasoned
    thresholds: Mapping[str, Reasoned]

    def threshold(self, key: str) -> str:
        """The threshold named *key*, as the PromQL literal it appears as."""
        try:
            return self.thresholds[key].value
        except KeyError:
            raise SettingsError(f"missing threshold {key!r}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything config.yml sets."""

    runbook_url_template: str
    exporter_selector: str
    windows: Mapping[str, Reasoned]
    causes: Mapping[str, Reasoned]
    alerts: Mapping[str, AlertSettings]

    def alert(self, name: str) -> AlertSettings:
        """The settings of the alert called *name*."""
        try:
            return self.alerts[name]
        except KeyError:
            raise SettingsError(f"no settings for alert {name!r}") from None

    def window(self, key: str) -> str:
        """The range-vector window named *key* (a Prometheus duration)."""
        try:
            return self.windows[key].value
        except KeyError:
            raise SettingsError(f"missing window {key!r}") from None

    def cause(self, key: str) -> str:
        """The cause threshold named *key*, as the PromQL literal it appears as."""
        try:
            return self.causes[key].value
        except KeyError:
            raise SettingsError(f"missing cause threshold {key!r}") from None

    def runbook_url(self, alertname: str) -> str:
        """The runbook address of *alertname*."""
        return self.runbook_url_template.format(alertname=alertname)


def load_settings(path: Path) -> Settings:
    """Read and validate config.yml."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    document = _mapping(raw, "config.yml")
    template = _text(document.get("runbook_url_template"), "runbook_url_template")
    if template.count("{alertname}") != 1:
        raise SettingsError("runbook_url_template must contain {alertname} once")
    return Settings(
        runbook_url_template=template,
        exporter_selector=_text(document.get("exporter_selector"), "exporter_selector"),
        windows={
            key: _duration(_reasoned(value, f"windows.{key}"), f"windows.{key}")
            for key, value in _mapping(document.get("windows"), "windows").items()
        },
        causes={
            key: _cause_threshold(key, _reasoned(value, f"causes.{key}"))
            for key, value in _mapping(document.get("causes"), "causes").items()
        },
        alerts={
            name: _alert(value, f"alerts.{name}")
            for name, value in _mapping(document.get("alerts"), "alerts").items()
        },
    )


def _alert(raw: object, where: str) -> AlertSettings:
    document = _mapping(raw, where)
    severity = _text(document.get("severity"), f"{where}.severity")
    if severity not in SEVERITIES:
        raise SettingsError(f"{where}.severity must be one of {', '.join(SEVERITIES)}")
    return AlertSettings(
        severity=severity,
        for_=_duration(_reasoned(document.get("for"), f"{where}.for"), f"{where}.for"),
        thresholds={
            key: _reasoned(value, f"{where}.thresholds.{key}")
            for key, value in _mapping(document.get("thresholds"), f"{where}.thresholds").items()
        },
    )


def _reasoned(raw: object, where: str) -> Reasoned:
    document = _mapping(raw, where)
    value = document.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{where}.value must be a number or a duration")
    return Reasoned(value=str(value), why=_text(document.get("why"), f"{where}.why"))


def _cause_threshold(key: str, setting: Reasoned) -> Reasoned:
    """A share (``*_share``) between 0 and 1, or a rate (``*_per_second``) above 0."""
    where = f"causes.{key}"
    if key.endswith("_per_second"):
        return _positive(setting, where)
    return _share(setting, where)


def _positive(setting: Reasoned, where: str) -> Reasoned:
    try:
        rate = float(setting.value)
    except ValueError:
        rate = -1.0
    if not rate > 0:
        raise SettingsError(f"{where}.value must be a rate above 0")
    return setting


def _share(setting: Reasoned, where: str) -> Reasoned:
    try:
        share = float(setting.value)
    except ValueError:
        share = -1.0
    if not 0 < share < 1:
        raise SettingsError(f"{where}.value must be a share between 0 and 1")
    return setting


def _duration(setting: Reasoned, where: str) -> Reasoned:
    if not _DURATION.match(setting.value):
        raise SettingsError(f"{where}.value must be a duration such as 0s, 5m or 1h30m")
    return setting


def _mapping(raw: object, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(key, str) for key in raw):
        raise SettingsError(f"{where} must be a mapping")
    return raw


def _text(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise SettingsError(f"{where} must be a non-empty string")
    return raw

"""monitoring/config.yml is validated: a wrong or missing setting stops the generator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring.settings import SettingsError, load_settings

from tests.monitoring.monitoring_bundle import CONFIG, load_yaml


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_shipped_config_loads_with_every_alert() -> None:
    settings = load_settings(CONFIG)
    assert settings.alert("GuestVCPUQueueHighWarning").threshold("queue") == "10"
    assert settings.alert("GuestVCPUQueueHighCritical").threshold("queue") == "20"
    assert settings.window("vcpu_rate") == "10m"
    assert settings.cause("busy_share") == "0.3"
    assert settings.cause("iowait_share") == "0.1"
    assert settings.cause("contention_share") == "0.2"
    assert settings.runbook_url("X").endswith("/docs/runbooks/X.md")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["alerts"]["GuestVCPUSaturation"]["for"].pop("why"), "for.why"),
        (lambda c: c["alerts"]["GuestVCPUSaturation"]["for"].update(value="15 min"), "duration"),
        (lambda c: c["alerts"]["GuestVCPUSaturation"].update(severity="page"), "severity"),
        (lambda c: c.update(runbook_url_template="https://example.org/runbooks"), "{alertname}"),
        (lambda c: c["windows"]["vcpu_rate"].update(value=True), "number or a duration"),
        (lambda c: c.pop("alerts"), "alerts must be a mapping"),
        (lambda c: c["causes"]["busy_share"].update(value=30), "between 0 and 1"),
        (lambda c: c["causes"]["iowait_share"].update(value="10m"), "between 0 and 1"),
        (lambda c: c.pop("causes"), "causes must be a mapping"),
    ],
    ids=[
        "reason-missing",
        "bad-duration",
        "unknown-severity",
        "url-without-name",
        "bool",
        "no-alerts",
        "share-as-percent",
        "share-as-duration",
        "no-causes",
    ],
)
def test_invalid_config_is_rejected_with_the_setting_named(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    document = load_yaml(CONFIG)
    change(document)
    with pytest.raises(SettingsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_settings(_write(tmp_path, document))


def test_unknown_threshold_or_alert_is_an_error() -> None:
    settings = load_settings(CONFIG)
    with pytest.raises(SettingsError, match="missing threshold 'nope'"):
        settings.alert("GuestVCPUSaturation").threshold("nope")
    with pytest.raises(SettingsError, match="no settings for alert 'Nope'"):
        settings.alert("Nope")
    with pytest.raises(SettingsError, match="missing cause threshold 'nope'"):
        settings.cause("nope")

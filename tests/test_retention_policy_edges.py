"""(Audit, round 18) retention policies (lifecycle/*.yaml) refuse what they would misread."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifecycle.policy import LIFECYCLE_DIR, LifecycleError, load_policy


def _policy_dir(tmp_path: Path, stack_text: str) -> Path:
    (tmp_path / "base.yaml").write_text((LIFECYCLE_DIR / "base.yaml").read_text())
    (tmp_path / "Pulumi.test.yaml").write_text("config: {}\n")
    (tmp_path / "test.yaml").write_text(stack_text)
    return tmp_path


@pytest.mark.parametrize(("written", "yaml_11"), [
    ("010", 8),          # octal to YAML 1.1, 10 to YAML 1.2 and JSON
    ("1_0", 10),
    ("1:30", 90),        # sexagesimal
])
def test_a_retention_written_in_a_yaml_1_1_integer_form_is_refused(tmp_path: Path, written: str,
                                                                   yaml_11: int) -> None:
    """`dynamic_metrics: 010` was read as 8 days, silently (PyYAML's YAML 1.1 octal); the metric
    catalog refuses these forms (core/yaml_text.py), the retention policy took them."""
    directory = _policy_dir(tmp_path, f"tables:\n  dynamic_metrics: {written}\n")
    assert yaml.safe_load(f"x: {written}")["x"] == yaml_11
    with pytest.raises(LifecycleError) as err:
        load_policy("test", directory, project_dir=directory)
    message = str(err.value)
    assert message.startswith(str(directory / "test.yaml")) and written in message and "fix:" in message


def test_an_empty_minimum_retention_block_keeps_the_base_floors(tmp_path: Path) -> None:
    """A stack file's `minimum_retention_days:` with every line commented out (a YAML null)
    dropped every floor of base.yaml: a raw rule deleting after 30 days then validated. The
    section merges key by key (docs/retention.md): no key, no change."""
    directory = _policy_dir(tmp_path, "minimum_retention_days:\n  # raw_events: 2555\n"
                                      "blob_rules:\n  - name: raw-events-tiering\n    container: raw-events\n"
                                      "    prefix: raw_events/\n    delete_after_days: 30\n")
    with pytest.raises(LifecycleError) as err:
        load_policy("test", directory, project_dir=directory)
    assert "below the minimum retention of 2555 days" in str(err.value)


@pytest.mark.parametrize(("stack_text", "where"), [
    ("tables:\n  aggregate_histograms: 999999\n", "tables.aggregate_histograms"),
    ("blob_rules:\n  - name: raw-events-tiering\n    container: raw-events\n    prefix: raw_events/\n"
     "    cool_after_days: 30\n    delete_after_days: 999999\n", "rule 'raw-events-tiering'"),
])
def test_a_retention_no_date_can_reach_is_refused(tmp_path: Path, stack_text: str, where: str) -> None:
    """`aggregate_histograms: 999999` ("keep for ever": a policy must name every table) validated,
    and then the daily retention job, `retention apply` and `lifecycle plan` stopped on
    OverflowError (`today - 999999 days` is no date), every day; a raw delete rule of 999999
    days did the same through the manifest's retention."""
    from datetime import date

    from lifecycle.policy import table_retention
    from txmetrics.retention import expiry

    directory = _policy_dir(tmp_path, stack_text)
    try:
        policy = load_policy("test", directory, project_dir=directory)
    except LifecycleError as err:
        message = str(err)
        assert message.startswith(f"{directory / 'test.yaml'}: {where}") and "fix:" in message, message
        return
    expiry(table_retention(policy), date(2026, 11, 30))          # a policy accepted must be applicable


def test_a_retention_setting_no_date_can_reach_is_refused() -> None:
    from txmetrics.settings import Settings, SettingsError

    settings = Settings.from_env({"TXMETRICS_RETENTION": '{"aggregate_histograms": 999999}'})
    with pytest.raises(SettingsError, match="aggregate_histograms must be at most"):
        assert settings.retention_days is None

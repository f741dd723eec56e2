"""The one settings object (functions/txmetrics/settings.py): every documented setting is
read, malformed ones are refused naming the setting and the fix, and nothing else in the
function's package reads the environment."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from txmetrics import settings as settings_module
from txmetrics.settings import BUNDLED_CATALOG, Settings, SettingsError

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"

# a value for each documented setting, and the attribute it must end up in
GIVEN = {
    "DATABASE_URL": ("postgresql://u@db:5432/x", "database_url", "postgresql://u@db:5432/x"),
    "DATABASE_AUTH": ("Entra", "database_auth", "entra"),
    "AZURE_STORAGE_CONNECTION_STRING": ("UseDevelopmentStorage=true", "storage_connection_string",
                                        "UseDevelopmentStorage=true"),
    "AZURE_STORAGE_ACCOUNT_URL": ("https://a.blob.core.windows.net", "storage_account_url",
                                  "https://a.blob.core.windows.net"),
    "AZURE_CLIENT_ID": ("0000-client", "managed_identity_client_id", "0000-client"),
    "RAW_EVENTS_CONTAINER": ("archive-x", "raw_events_container", "archive-x"),
    "METRIC_CATALOG": ("/etc/catalog.yaml", "metric_catalog", Path("/etc/catalog.yaml")),
    "TXMETRICS_RETENTION": ('{"dynamic_metrics": 35}', "retention_days", {"dynamic_metrics": 35}),
}


def documented() -> set[str]:
    """The settings the module's table documents (| NAME | meaning | default |)."""
    return set(re.findall(r"^\| ([A-Z_]+) \|", settings_module.__doc__ or "", re.M))


def test_every_documented_setting_is_read() -> None:
    assert documented() == set(GIVEN), "the table in settings.py and this test name different settings"
    defaults = Settings.from_env({})
    for name, (value, attribute, expected) in GIVEN.items():
        got = getattr(Settings.from_env({name: value}), attribute)
        assert got == expected and got != getattr(defaults, attribute), name


def test_defaults_and_blank_values() -> None:
    s = Settings.from_env({"DATABASE_URL": "  ", "RAW_EVENTS_CONTAINER": ""})
    assert (s.database_url, s.raw_events_container, s.metric_catalog, s.database_auth, s.retention_days) == \
        (None, "raw-events", BUNDLED_CATALOG, "password", {})


@pytest.mark.parametrize(("env", "message"), [
    ({"DATABASE_AUTH": "kerberos"}, "DATABASE_AUTH='kerberos': set 'entra'"),
    ({"TXMETRICS_RETENTION": "[35]"}, "TXMETRICS_RETENTION is not a JSON object of table: days"),
    ({"TXMETRICS_RETENTION": '{"dynamic_metrics": "a month"}'},
     "TXMETRICS_RETENTION: dynamic_metrics must be a whole number of days >= 1, got 'a month'"),
    # the daily timer drops what this says: -1 dropped today's partitions (an audit), 0 and 1.9
    # (cut to 1) were taken, a misspelt table was kept for ever without a word
    ({"TXMETRICS_RETENTION": '{"dynamic_metrics": -1, "ingested_events": -1}'},
     "TXMETRICS_RETENTION: dynamic_metrics must be a whole number of days >= 1, got -1"),
    ({"TXMETRICS_RETENTION": '{"dynamic_metrics": 0}'}, "dynamic_metrics must be a whole number of days >= 1, got 0"),
    ({"TXMETRICS_RETENTION": '{"dynamic_metrics": 1.9}'},
     "dynamic_metrics must be a whole number of days >= 1, got 1.9"),
    ({"TXMETRICS_RETENTION": '{"failed_items": true}'}, "failed_items must be a whole number of days >= 1, got True"),
    ({"TXMETRICS_RETENTION": '{"dynamc_metrics": 14}'},
     "TXMETRICS_RETENTION: 'dynamc_metrics' is not a table with a retention (use dynamic_metrics, ingested_events"),
    ({"TXMETRICS_RETENTION": '{"dynamic_metrics": 14, "ingested_events": 3}'},
     "ingested_events (3 days) is shorter than dynamic_metrics (14 days)"),
    ({"TXMETRICS_RETENTION": '{"ingested_events": 3}'},
     "ingested_events (3 days) is shorter than dynamic_metrics (kept for ever)"),
    ({"RAW_EVENTS_CONTAINER": "Raw_Events"}, "RAW_EVENTS_CONTAINER='Raw_Events' is not a Blob Storage container name"),
    ({"RAW_EVENTS_CONTAINER": "raw--events"}, "RAW_EVENTS_CONTAINER='raw--events' is not a Blob Storage container"),
    ({"RAW_EVENTS_CONTAINER": "ab"}, "RAW_EVENTS_CONTAINER='ab' is not a Blob Storage container name"),
    ({"RAW_EVENTS_CONTAINER": "a" * 64}, "is not a Blob Storage container name"),
])
def test_a_malformed_setting_is_refused_with_its_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env).retention_days      # noqa: B018  # the retention is checked where it is read


def test_a_bad_retention_stops_the_retention_job_not_the_rest() -> None:
    """Ingest, the catalog and the timers that drop nothing read the settings too: a retention
    edited wrong by hand must not stop them, only the job that would drop data."""
    settings = Settings.from_env({"TXMETRICS_RETENTION": '{"dynamic_metrics": -1}', "RAW_EVENTS_CONTAINER": "raw-x"})
    assert (settings.raw_events_container, settings.metric_catalog) == ("raw-x", BUNDLED_CATALOG)
    with pytest.raises(SettingsError, match="dynamic_metrics must be a whole number of days >= 1, got -1"):
        settings.retention_days      # noqa: B018  # reading it is the check


def test_a_missing_service_is_refused_where_it_is_needed() -> None:
    s = Settings.from_env({})
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        s.require_database()
    with pytest.raises(SettingsError, match="neither AZURE_STORAGE_CONNECTION_STRING nor AZURE_STORAGE_ACCOUNT_URL"):
        s.require_storage()
    assert Settings.from_env({"AZURE_STORAGE_ACCOUNT_URL": "https://a"}).require_storage() == (None, "https://a")


def environment_reads(path: Path) -> list[int]:
    """Lines of `path` that touch os.environ or call os.getenv."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
            and node.attr in ("environ", "getenv")]


def test_only_settings_reads_the_environment() -> None:
    files = [*sorted((FUNCTIONS / "txmetrics").rglob("*.py")), FUNCTIONS / "function_app.py"]
    readers = {str(p.relative_to(FUNCTIONS)): lines for p in files if (lines := environment_reads(p))}
    assert set(readers) == {"txmetrics/settings.py"}, readers


def test_retention_as_lifecycle_renders_it_is_taken() -> None:
    """The setting `pulumi up` renders from each stack's lifecycle files passes the same checks."""
    from lifecycle.policy import load_policy, table_retention, table_retention_setting

    for stack in ("dev", "prod"):
        setting = table_retention_setting(load_policy(stack))
        assert Settings.from_env({"TXMETRICS_RETENTION": setting}).retention_days == \
            table_retention(load_policy(stack))
    assert Settings.from_env({"RAW_EVENTS_CONTAINER": "a" * 63}).raw_events_container == "a" * 63

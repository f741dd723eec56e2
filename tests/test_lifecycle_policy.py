"""Retention policies as code: one validation test per rule, each error naming file, rule
and fix; the rendered management policy for dev and prod, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lifecycle.policy import (
    LIFECYCLE_DIR,
    LifecycleError,
    load_policy,
    render_management_policy,
    table_retention,
)


def write_policy(tmp_path: Path, base_changes: dict[str, Any] | None = None, stack: dict[str, Any] | None = None,
                 rule_changes: dict[str, Any] | None = None) -> Path:
    base = yaml.safe_load((LIFECYCLE_DIR / "base.yaml").read_text())
    base.update(base_changes or {})
    if rule_changes is not None:
        base["blob_rules"][0].update(rule_changes)
        for k, v in list(base["blob_rules"][0].items()):
            if v is None:
                del base["blob_rules"][0][k]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (tmp_path / "Pulumi.test.yaml").write_text("config: {}\n")     # makes "test" a stack of this project
    if stack is not None:
        (tmp_path / "test.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return tmp_path


def refused(tmp_path: Path, **kwargs: Any) -> str:
    directory = write_policy(tmp_path, **kwargs)
    with pytest.raises(LifecycleError) as err:
        load_policy("test", directory, project_dir=directory)
    return str(err.value)


def test_the_shipped_policies_are_valid() -> None:
    for stack in ("dev", "prod"):
        policy = load_policy(stack)
        assert policy.rule("raw-events-tiering").days["archive"] == 90


def test_tier_days_must_be_in_order(tmp_path: Path) -> None:
    msg = refused(tmp_path, rule_changes={"cool_after_days": 120})
    assert msg.startswith(f"{tmp_path / 'base.yaml'}: rule 'raw-events-tiering': ")
    assert "cool_after_days (120) must be less than archive_after_days (90)" in msg and "fix: tiers go cool" in msg


def test_archive_is_refused_on_zone_redundant_accounts(tmp_path: Path) -> None:
    msg = refused(tmp_path, stack={"storage": {"redundancy": "Standard_ZRS"}})
    assert "rule 'raw-events-tiering'" in msg and "not available on Standard_ZRS" in msg
    assert "fix: use Standard_LRS, Standard_GRS or Standard_RAGRS" in msg


def test_delete_inside_the_early_deletion_window_is_flagged(tmp_path: Path) -> None:
    msg = refused(tmp_path, rule_changes={"delete_after_days": 200},
                  base_changes={"minimum_retention_days": {"raw_events": 100}})
    assert "rule 'raw-events-tiering'" in msg and "180-day early-deletion window" in msg
    assert "fix: set delete_after_days >= 270, or allow_early_deletion: true" in msg
    directory = write_policy(tmp_path, rule_changes={"delete_after_days": 200, "allow_early_deletion": True},
                             base_changes={"minimum_retention_days": {"raw_events": 100}})
    assert load_policy("test", directory, project_dir=directory).rule("raw-events-tiering").days["delete"] == 200


def test_a_prefix_must_start_with_a_real_container(tmp_path: Path) -> None:
    msg = refused(tmp_path, rule_changes={"container": "raw-event"})
    assert "container 'raw-event' is not one of the account's containers (raw-events)" in msg
    assert "fix: name an existing container" in msg
    msg = refused(tmp_path, rule_changes={"prefix": "/raw_events/"})
    assert "fix: write e.g. prefix: raw_events/" in msg


def test_at_most_100_rules(tmp_path: Path) -> None:
    rules = [{"name": f"r{i}", "container": "raw-events", "prefix": f"p{i}/", "delete_after_days": 30}
             for i in range(101)]
    msg = refused(tmp_path, base_changes={"blob_rules": rules})
    assert "101 rules; Azure allows at most 100" in msg and "fix: merge rules" in msg


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, rule_changes={"archve_after_days": 90})
    assert "rule 'raw-events-tiering': unknown key 'archve_after_days'" in msg and "fix: use only" in msg
    msg = refused(tmp_path, stack={"tabels": {}})
    assert f"{tmp_path / 'test.yaml'}: key 'tabels': unknown key" in msg
    msg = refused(tmp_path, stack={"tables": {"dynamic_metric": 3}})
    assert "tables.dynamic_metric: unknown table" in msg


def test_retention_below_the_minimum_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, stack={"tables": {"dynamic_metrics": 3}})
    assert f"{tmp_path / 'test.yaml'}: tables.dynamic_metrics: 3 days is below the minimum retention of 7 days" in msg
    assert "fix: keep dynamic_metrics at least 7 days" in msg
    msg = refused(tmp_path, rule_changes={"delete_after_days": 1000})
    assert "delete_after_days 1000 is below the minimum retention of 2555 days for raw events" in msg


def test_a_minimum_that_is_not_a_number_of_days_is_refused(tmp_path: Path) -> None:
    """It used to escape as a bare ValueError from int("seven years")."""
    msg = refused(tmp_path, stack={"minimum_retention_days": {"raw_events": "seven years"}})
    assert f"{tmp_path / 'test.yaml'}: minimum_retention_days.raw_events: must be a whole number of days >= 0, " \
           "got 'seven years'" in msg and "fix: write e.g. raw_events: 365" in msg


def test_the_ledger_must_outlive_the_metrics(tmp_path: Path) -> None:
    msg = refused(tmp_path, stack={"tables": {"ingested_events": 20}})
    assert "tables.ingested_events: 20 days is shorter than dynamic_metrics (35)" in msg


def test_a_key_written_twice_is_refused_at_any_depth(tmp_path: Path) -> None:
    """docs/retention.md followed literally (a second `tables:` block appended to the stack
    file) validated and silently reverted the first block's retention to the base values:
    YAML keeps the last of two equal keys. Refused with file, key, both lines and the fix."""
    write_policy(tmp_path)
    stack = tmp_path / "test.yaml"
    stack.write_text("tables:\n  failed_items: 30\n  aggregate_histograms: 90\n"
                     "storage:\n  redundancy: Standard_LRS\n"
                     "tables:\n  dynamic_metrics: 21\n  ingested_events: 21\n")
    with pytest.raises(LifecycleError) as err:
        load_policy("test", tmp_path, project_dir=tmp_path)
    assert str(err.value) == (f"{stack}: tables: written twice (lines 1 and 6); YAML would keep only the last one "
                              "and silently drop the first; fix: write 'tables' once there: merge the two into one "
                              "(or delete the one you do not mean)")
    stack.write_text("blob_rules:\n  - name: a\n    container: raw-events\n    delete_after_days: 30\n"
                     "    delete_after_days: 3000\n")
    with pytest.raises(LifecycleError, match=r"test.yaml: blob_rules\[0\].delete_after_days: written twice "
                                             r"\(lines 4 and 5\).*; fix: write 'delete_after_days' once"):
        load_policy("test", tmp_path, project_dir=tmp_path)
    # one block with both changes is what the guide means, and merges with the base key by key
    stack.write_text("tables:\n  failed_items: 30\n  aggregate_histograms: 400\n  dynamic_metrics: 21\n"
                     "  ingested_events: 21\n")
    tables = load_policy("test", tmp_path, project_dir=tmp_path).tables
    assert (tables["failed_items"], tables["aggregate_histograms"], tables["dynamic_metrics"]) == (30, 400, 21)


def test_the_retention_guide_s_example_validates_as_written(tmp_path: Path) -> None:
    """The "Change a retention period" step of docs/retention.md, done to a copy of dev.yaml
    as the guide says, keeps the other tables' dev retention."""
    import re
    import shutil
    import textwrap

    guide = (LIFECYCLE_DIR.parent / "docs" / "retention.md").read_text()
    step = guide.split("## Change a retention period", 1)[1].split("2. Validate", 1)[0]
    snippet = re.search(r"```yaml\n(.*?)\n *```", step, re.S)
    assert snippet, "the guide's step 1 shows the edited tables block"
    shutil.copy(LIFECYCLE_DIR / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "Pulumi.dev.yaml").write_text("config: {}\n")
    dev = (LIFECYCLE_DIR / "dev.yaml").read_text()
    block = re.search(r"^tables:\n(?:  .*\n)+", dev, re.M)
    assert block is not None
    (tmp_path / "dev.yaml").write_text(dev.replace(block.group(0), textwrap.dedent(snippet.group(1)) + "\n"))
    tables = load_policy("dev", tmp_path, project_dir=tmp_path).tables
    assert (tables["dynamic_metrics"], tables["ingested_events"]) == (21, 21)
    shipped = load_policy("dev").tables
    assert (tables["failed_items"], tables["aggregate_histograms"]) == (shipped["failed_items"],
                                                                        shipped["aggregate_histograms"])


EXPECTED = {
    "dev": {"rules": [
        {"enabled": True, "name": "raw-events-tiering", "type": "Lifecycle", "definition": {
            "actions": {"baseBlob": {"tierToCool": {"daysAfterModificationGreaterThan": 30},
                                     "tierToArchive": {"daysAfterModificationGreaterThan": 90},
                                     "delete": {"daysAfterModificationGreaterThan": 270}}},
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["raw-events/raw_events/",
                                                                    "raw-events/_staging/compaction/raw_events/"]}}},
    ]},
    "prod": {"rules": [
        {"enabled": True, "name": "raw-events-tiering", "type": "Lifecycle", "definition": {
            "actions": {"baseBlob": {"tierToCool": {"daysAfterModificationGreaterThan": 30},
                                     "tierToArchive": {"daysAfterModificationGreaterThan": 90},
                                     "delete": {"daysAfterModificationGreaterThan": 2555}}},
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["raw-events/raw_events/",
                                                                    "raw-events/_staging/compaction/raw_events/"]}}},
    ]},
}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_rendered_management_policy(stack: str) -> None:
    assert render_management_policy(load_policy(stack)) == EXPECTED[stack]


# Issue 12, item 2. On Flex Consumption the app runs from the package in its deployment container: every new
# instance reads it (Learn, "Deployment technologies in Azure Functions", Flex: runs from the deployed package),
# so a rule that deletes or tiers it takes the app down at its next cold start.
@pytest.mark.parametrize("rule", [
    {"name": "old-function-packages", "container": "deployments", "prefix": "", "delete_after_days": 90},
    {"name": "cheap-packages", "container": "deployments", "prefix": "released/", "cool_after_days": 30},
])
def test_a_rule_on_the_deployment_container_is_refused_naming_rule_and_container(
        tmp_path: Path, rule: dict[str, Any]) -> None:
    base = yaml.safe_load((LIFECYCLE_DIR / "base.yaml").read_text())
    base["storage"]["containers"] = ["raw-events"]
    base["blob_rules"].append(rule)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (tmp_path / "Pulumi.test.yaml").write_text("config: {}\n")
    with pytest.raises(LifecycleError) as err:
        load_policy("test", tmp_path, project_dir=tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'base.yaml'}: rule '{rule['name']}': container 'deployments' ")
    assert "package the Function App runs from" in msg and f"fix: remove rule '{rule['name']}'" in msg


def test_the_deployment_container_cannot_be_listed_as_a_governed_container(tmp_path: Path) -> None:
    msg = refused(tmp_path, stack={"storage": {"containers": ["raw-events", "deployments"]}})
    assert "storage.containers: container 'deployments' is not governed by lifecycle rules" in msg
    assert "fix: remove 'deployments' from storage.containers" in msg


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_shipped_policies_never_reach_the_deployment_container(stack: str) -> None:
    rules = render_management_policy(load_policy(stack))["rules"]
    assert rules, "a policy with no rules would hide this check"
    for rule in rules:
        prefixes = rule["definition"]["filters"].get("prefixMatch")
        assert prefixes, f"{rule['name']}: a rule without prefixMatch applies to every container"
        assert not any(p.startswith("deployments/") or "deployments/".startswith(p) for p in prefixes), rule


def test_rendering_refuses_a_hand_built_rule_on_the_deployment_container() -> None:
    from dataclasses import replace

    from lifecycle.policy import BlobRule

    policy = load_policy("dev")
    sneaky = replace(policy, blob_rules=(*policy.blob_rules,
                                         BlobRule(name="sneaky", container="deployments", prefix="", days={"delete": 1})))
    with pytest.raises(LifecycleError, match="rule 'sneaky': container 'deployments' may not have a lifecycle rule"):
        render_management_policy(sneaky)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_compaction_staging_has_the_raw_events_own_lifecycle(stack: str) -> None:
    """A compaction output waiting in staging holds raw events of its day: it must not be
    deleted before the raw events' retention, nor outlive it by much (an orphan outliving its
    day's files would be published back by a rebuild as their only copy). Each rendered rule
    that reaches a file of the tree reaches its staged path too, with the same actions."""
    from datetime import date

    from txmetrics.core.naming import compacted_file_path, compaction_staging_path

    final = f"raw-events/{compacted_file_path(date(2026, 3, 5), '0123456789abcdef', 0)}"
    staged = f"raw-events/{compaction_staging_path(compacted_file_path(date(2026, 3, 5), '0123456789abcdef', 0))}"

    def actions_on(path: str) -> list[dict[str, Any]]:
        return [r["definition"]["actions"] for r in render_management_policy(load_policy(stack))["rules"]
                if any(path.startswith(p) for p in r["definition"]["filters"]["prefixMatch"])]

    assert actions_on(final) and actions_on(staged) == actions_on(final)


def test_table_retention_per_stack() -> None:
    assert table_retention(load_policy("dev")) == {"dynamic_metrics": 14, "ingested_events": 14, "failed_items": 30,
                                                   "aggregate_histograms": 90, "raw_files": 270}
    assert table_retention(load_policy("prod"))["dynamic_metrics"] == 35


@pytest.mark.parametrize("prefix", ["", "raw", "raw_ev"])
def test_a_rule_reaching_the_raw_archive_from_a_shorter_prefix_keeps_its_minimum(tmp_path: Path, prefix: str) -> None:
    """Azure matches prefixMatch as a plain string prefix: a rule on the raw container with
    prefix "" or "raw" deletes raw_events/ blobs too, and was taken below the 7-year floor
    (an audit: `prefix: raw, delete_after_days: 40` rendered and accepted)."""
    rule = {"name": "cleanup", "container": "raw-events", "prefix": prefix, "delete_after_days": 40}
    base = yaml.safe_load((LIFECYCLE_DIR / "base.yaml").read_text())
    msg = refused(tmp_path, base_changes={"blob_rules": [*base["blob_rules"], rule]})
    assert "rule 'cleanup': delete_after_days 40 is below the minimum retention of 2555 days for raw events" in msg


def test_the_raw_manifest_follows_the_first_rule_that_deletes_raw_blobs(tmp_path: Path) -> None:
    """raw_files rows go when the blobs go: with a whole-container rule deleting sooner than the
    tree's own rule, the sooner one decides (and a disabled rule deletes nothing); its staged
    outputs are matched by the same rule."""
    base = yaml.safe_load((LIFECYCLE_DIR / "base.yaml").read_text())
    tree_delete = base["blob_rules"][0]["delete_after_days"]
    rules = [*base["blob_rules"],
             {"name": "whole", "container": "raw-events", "prefix": "raw", "delete_after_days": tree_delete - 5},
             {"name": "off", "container": "raw-events", "prefix": "", "delete_after_days": tree_delete - 9,
              "enabled": False}]
    directory = write_policy(tmp_path, base_changes={"blob_rules": rules, "minimum_retention_days": {}})
    policy = load_policy("test", directory, project_dir=directory)
    assert table_retention(policy)["raw_files"] == tree_delete - 5
    assert policy.rule("whole").prefixes == ("raw", "_staging/compaction/raw")


@pytest.mark.parametrize("key", ["enabled", "allow_early_deletion"])
@pytest.mark.parametrize("value", ["false", "maybe", 0])
def test_rule_switches_must_be_booleans(tmp_path: Path, key: str, value: Any) -> None:
    """`enabled: "false"` rendered an enabled rule, and `allow_early_deletion: "false"` turned the
    early-deletion check off (bool() of a non-empty string)."""
    msg = refused(tmp_path, rule_changes={key: value})
    assert f"{tmp_path / 'base.yaml'}: rule 'raw-events-tiering': {key} must be true or false" in msg
    assert f"fix: write {key}: true or {key}: false, unquoted" in msg


@pytest.mark.parametrize(("stack", "where"), [
    ({"tables": [{"dynamic_metrics": 21}]}, "tables: must be a mapping of keys to values, got a list"),
    ({"tables": 35}, "tables: must be a mapping of keys to values, got the number 35"),
    ({"storage": "Standard_LRS"}, "storage: must be a mapping of keys to values, got the text 'Standard_LRS'"),
    ({"minimum_retention_days": 7}, "minimum_retention_days: must be a mapping of keys to values, got the number 7"),
    ({"storage": {"containers": "raw-events"}},
     "storage.containers: must be a list of container names, got the text 'raw-events'"),
])
def test_sections_of_the_wrong_shape_are_refused_naming_file_and_key(tmp_path: Path, stack: dict[str, Any],
                                                                     where: str) -> None:
    """They escaped as TypeErrors (`tables: 35`), or blamed base.yaml and listed the characters of
    a container name written as a string (an audit)."""
    msg = refused(tmp_path, stack=stack)
    assert msg.startswith(f"{tmp_path / 'test.yaml'}: {where}; fix: write e.g."), msg


@pytest.mark.parametrize("prefix", ["_staging/", "_staging/compaction/", "_staging/compaction/raw_events/", "_"])
def test_a_rule_on_compaction_staging_keeps_the_raw_events_minimum(tmp_path: Path, prefix: str) -> None:
    """A staged compaction output holds raw events and can be their only copy (a run killed
    between deleting its inputs and publishing; a rebuild settles it): docs/decisions.md,
    "Lifecycle of compaction staging", says no rule may delete it sooner than the raw events'
    retention. A "clean up staging leftovers" rule (`prefix: _staging/, delete_after_days: 1`)
    was accepted below the 7-year floor."""
    rule = {"name": "staging-cleanup", "container": "raw-events", "prefix": prefix, "delete_after_days": 40}
    base = yaml.safe_load((LIFECYCLE_DIR / "base.yaml").read_text())
    msg = refused(tmp_path, base_changes={"blob_rules": [*base["blob_rules"], rule]})
    assert "rule 'staging-cleanup': delete_after_days 40 is below the minimum retention of 2555 days for raw events" in msg


@pytest.mark.parametrize("name", ["Raw-Events", "raw_events", "rw", "raw--events", "-raw-events", "raw-events-",
                                  "r" * 64])
def test_a_container_name_azure_refuses_is_refused_here(tmp_path: Path, name: str) -> None:
    """Each listed container becomes a storage.BlobContainer the program creates (infra/storage.py): the mocks
    take any name, Azure refuses one outside 3-63 lower-case letters, digits and single inner hyphens (Learn,
    "Naming and Referencing Containers, Blobs, and Metadata"; pulumi-azure-native BlobContainer.container_name)."""
    msg = refused(tmp_path, stack={"storage": {"containers": ["raw-events", name]}})
    assert f"storage.containers: {name!r} is not a Blob Storage container name" in msg
    assert msg.startswith(f"{tmp_path / 'test.yaml'}: ") and "fix: use 3-63 lower-case letters" in msg


def test_a_container_listed_twice_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, stack={"storage": {"containers": ["raw-events", "raw-events"]}})
    assert "storage.containers: container 'raw-events' is listed twice" in msg

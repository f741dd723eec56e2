"""Retention policies as code: load (base + per-stack override), validate, render.

`load_policy(stack)` reads `lifecycle/base.yaml` and, when present, `lifecycle/<stack>.yaml`;
the stack must be known (a `Pulumi.<stack>.yaml` in the project).
Override rules: `blob_rules` in the stack file replaces the base list whole; the mappings
`storage`, `tables` and `minimum_retention_days` are merged key by key.

Every error names the file, the rule (or key) and the fix: `LifecycleError`. A key written
twice in one mapping (a second `tables:` block) is refused with its lines, never "last one
wins" (core/yaml_text.py).
`render_management_policy(policy)` gives the storage account's management policy in its
exact ARM shape; the Pulumi program applies it (single source of truth).
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from txmetrics.core.naming import (
    CONTAINER_NAME,
    RAW_EVENTS_CONTAINER,
    RAW_PREFIX,
    STAGING_PREFIX,
    compaction_staging_path,
)
from txmetrics.core.tables import MAX_RETENTION_DAYS, RETAINED
from txmetrics.core.yaml_text import DuplicateKeyError, YAML11IntegerError, load_yaml

LIFECYCLE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = LIFECYCLE_DIR.parent            # Pulumi.yaml and one Pulumi.<stack>.yaml per stack
MAX_RULES = 100
NO_ARCHIVE_REDUNDANCY = {"Standard_ZRS", "Standard_GZRS", "Standard_RAGZRS", "Premium_ZRS"}
REDUNDANCIES = {"Standard_LRS", "Standard_GRS", "Standard_RAGRS", *NO_ARCHIVE_REDUNDANCY}
TIERS = ("cool", "cold", "archive", "delete")            # in the order blobs move through them
# per tier of a rule: the action of the ARM management policy (what Pulumi deploys and the plan
# names), and the Blob Storage access tier a blob moves to
ARM_ACTION = {"cool": "tierToCool", "cold": "tierToCold", "archive": "tierToArchive", "delete": "delete"}
ACCESS_TIER = {"cool": "Cool", "cold": "Cold", "archive": "Archive"}
EARLY_DELETION_DAYS = {"cool": 30, "cold": 90, "archive": 180}
TABLES = RETAINED
TOP_KEYS = {"version", "storage", "blob_rules", "tables", "minimum_retention_days"}
STORAGE_KEYS = {"redundancy", "containers"}
RULE_KEYS = {"name", "container", "prefix", "cool_after_days", "cold_after_days", "archive_after_days",
             "delete_after_days", "allow_early_deletion", "enabled"}
MINIMUM_KEYS = {"raw_events", *TABLES}
# Containers no lifecycle rule may reach. On Flex Consumption the Function App runs from the one package in
# its deployment container: every new instance (scale-out, scale from zero) reads it, so deleting or tiering
# it breaks the app at its next cold start (Learn, "Deployment technologies in Azure Functions", Flex column:
# runs from the deployed package; "Flex Consumption plan hosting": deployment.storage). The Pulumi program
# keeps that container out of the data account altogether (infra/storage.py); this guard keeps a policy file
# from ever naming it.
PROTECTED_CONTAINERS = {
    "deployments": "it holds the package the Function App runs from (Flex Consumption reads it on every cold "
                   "start and scale-out); deleting or tiering it takes the app down",
}


def reaches_raw_archive(container: str, prefix: str) -> bool:
    """Whether a rule on `container` with `prefix` acts on raw archive blobs: a prefix inside
    the raw_events tree, or one the tree's own path starts with (`raw`, or "" for the whole
    container). Azure matches `prefixMatch` as a plain string prefix of the blob's path."""
    return container == RAW_EVENTS_CONTAINER and (prefix.startswith(RAW_PREFIX) or RAW_PREFIX.startswith(prefix))


def reaches_staged_raw_events(container: str, prefix: str) -> bool:
    """Whether a rule acts on compaction outputs waiting in staging (`_staging/compaction/raw_events/...`):
    they hold raw events, and one a killed run left can be their only copy, so they keep the
    raw events' minimum retention (docs/decisions.md, "Lifecycle of compaction staging")."""
    staged = STAGING_PREFIX + RAW_PREFIX
    return container == RAW_EVENTS_CONTAINER and (prefix.startswith(staged) or staged.startswith(prefix))


class LifecycleError(ValueError):
    """An invalid retention policy; the message names file, rule and fix."""


@dataclass(frozen=True)
class BlobRule:
    name: str
    container: str
    prefix: str
    days: dict[str, int]          # tier -> days after modification ("delete" included)
    enabled: bool = True

    @property
    def full_prefix(self) -> str:
        return f"{self.container}/{self.prefix}"

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The prefixes the rule acts on inside its container: its own and, for a rule on the
        raw archive's tree, the same path under compaction staging (naming.compaction_staging_path).
        A staged output holds raw events of its day too: it tiers and is deleted at the same ages,
        never sooner (compliance), and never much later (an orphan outliving its day's files would
        look like their only copy; docs/decisions.md, "Lifecycle of compaction staging")."""
        if reaches_raw_archive(self.container, self.prefix) and self.prefix:
            return (self.prefix, compaction_staging_path(self.prefix))
        return (self.prefix,)

    @property
    def full_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{self.container}/{p}" for p in self.prefixes)


@dataclass(frozen=True)
class Policy:
    stack: str
    files: tuple[str, ...]
    redundancy: str
    containers: tuple[str, ...]
    blob_rules: tuple[BlobRule, ...]
    tables: dict[str, int]
    minimums: dict[str, int]

    def rule(self, name: str) -> BlobRule:
        return next(r for r in self.blob_rules if r.name == name)


def _read(path: Path) -> dict[str, Any]:
    try:
        # integers as JSON and YAML 1.2 write them: `dynamic_metrics: 010` is 8 days to YAML 1.1
        data = load_yaml(path.read_text(), plain_integers=True)
    except YAML11IntegerError as exc:
        raise LifecycleError(f"{path}: line {exc.line}: {exc.what}; fix: {exc.fix}") from None
    except yaml.YAMLError as exc:
        raise LifecycleError(f"{path}: not valid YAML ({exc}); fix: correct the YAML syntax") from None
    except DuplicateKeyError as exc:
        raise LifecycleError(f"{path}: {exc.key}: {exc.reason}; fix: {exc.fix}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LifecycleError(f"{path}: the file must be a mapping; fix: start with keys such as 'blob_rules:'")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise LifecycleError(f"{path}: key '{sorted(unknown)[0]}': unknown key; fix: use only "
                             f"{', '.join(sorted(TOP_KEYS))}")
    return data


def known_stacks(project_dir: Path) -> tuple[str, ...]:
    """The Pulumi stacks of the project: one per Pulumi.<stack>.yaml next to Pulumi.yaml."""
    return tuple(sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml")))


def load_policy(stack: str, directory: Path = LIFECYCLE_DIR, project_dir: Path = PROJECT_DIR) -> Policy:
    """The policy of a known stack: base.yaml, overridden by <stack>.yaml when present.

    A stack is known when `project_dir` has its Pulumi.<stack>.yaml; any other name is
    refused, naming the known stacks, rather than silently getting the base policy (a typo
    must not decide what retention drops)."""
    stacks = known_stacks(project_dir)
    if stack not in stacks:
        raise LifecycleError(f"unknown stack {stack!r}: the known stacks are {', '.join(stacks) or 'none'} "
                             f"(one per Pulumi.<stack>.yaml in {project_dir}); fix: use one of them, or create the "
                             f"stack (pulumi stack init {stack}, with its Pulumi.{stack}.yaml) first")
    base_path = directory / "base.yaml"
    merged = _read(base_path)
    origin = {k: str(base_path) for k in merged}
    files = [str(base_path)]
    stack_path = directory / f"{stack}.yaml"
    if stack_path.exists():
        override = _read(stack_path)
        files.append(str(stack_path))
        for key, value in override.items():
            if key in ("storage", "tables", "minimum_retention_days") and value is None:
                # an empty section (every line commented out) merges no key: it must not drop
                # the base's, least of all the compliance floors of minimum_retention_days
                continue
            if key in ("storage", "tables", "minimum_retention_days") and isinstance(value, dict):
                merged[key] = {**(merged.get(key) or {}), **value}
            else:
                merged[key] = copy.deepcopy(value)
            origin[key] = str(stack_path)
    return validate(merged, stack=stack, origin=origin, files=tuple(files))


def validate(raw: dict[str, Any], *, stack: str, origin: dict[str, str], files: tuple[str, ...]) -> Policy:
    """The Policy `raw` (the merged files of `stack`) describes, or LifecycleError naming the
    file a section came from, the key, what is wrong and the fix: the storage account, the
    minimum retentions, each blob rule, the tables."""
    fail = _Refusal(origin, files)
    for section, example in (("storage", "storage: {redundancy: Standard_LRS, containers: [raw-events]}"),
                             ("tables", "tables: {dynamic_metrics: 35, ingested_events: 35, ...}"),
                             ("minimum_retention_days", "minimum_retention_days: {raw_events: 2555}")):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise fail(section, section, f"must be a mapping of keys to values, got {_shape(raw[section])}",
                       f"write e.g. {example}")
    redundancy, containers = _validate_storage(raw.get("storage") or {}, fail)
    rules_raw = raw.get("blob_rules") or []
    if not isinstance(rules_raw, list):
        raise fail("blob_rules", "blob_rules", "must be a list of rules", "write '- name: ...' items")
    if len(rules_raw) > MAX_RULES:
        raise fail("blob_rules", "blob_rules", f"{len(rules_raw)} rules; Azure allows at most {MAX_RULES}",
                   "merge rules that share a prefix")
    minimums = _validate_minimums(raw.get("minimum_retention_days") or {}, fail)
    rules: list[BlobRule] = []
    for i, r in enumerate(rules_raw):
        rules.append(_validate_rule(r, i, fail, redundancy=redundancy, containers=containers, minimums=minimums,
                                    taken={rule.name for rule in rules}))
    return Policy(stack=stack, files=files, redundancy=redundancy, containers=containers, blob_rules=tuple(rules),
                  tables=_validate_tables(raw.get("tables") or {}, fail, minimums=minimums), minimums=minimums)


def _shape(value: Any) -> str:
    """What a YAML value is, for a refusal (a list, a number, ...)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__


class _Refusal:
    """Builds the LifecycleError of a section: `file: where: what; fix: fix`, the file being
    the one the section came from (the stack's file overrides the base)."""

    def __init__(self, origin: dict[str, str], files: tuple[str, ...]) -> None:
        self.origin, self.files = origin, files

    def __call__(self, section: str, where: str, what: str, fix: str) -> LifecycleError:
        return LifecycleError(f"{self.origin.get(section, self.files[-1])}: {where}: {what}; fix: {fix}")


def _validate_storage(storage: dict[str, Any], fail: _Refusal) -> tuple[str, tuple[str, ...]]:
    """The account's redundancy and the containers the rules may act on."""
    unknown = set(storage) - STORAGE_KEYS
    if unknown:
        raise fail("storage", f"storage.{sorted(unknown)[0]}", "unknown key", f"use only {', '.join(sorted(STORAGE_KEYS))}")
    redundancy = storage.get("redundancy", "Standard_LRS")
    if redundancy not in REDUNDANCIES:
        raise fail("storage", "storage.redundancy", f"{redundancy!r} is not a storage redundancy",
                   f"use one of {', '.join(sorted(REDUNDANCIES))}")
    listed = storage.get("containers") or []
    if not isinstance(listed, list) or not all(isinstance(c, str) and c for c in listed):
        raise fail("storage", "storage.containers", f"must be a list of container names, got {_shape(listed)}",
                   "write e.g. containers: [raw-events]")
    containers = tuple(listed)
    for container in containers:
        # the program creates each listed container, and Azure refuses any other name
        # (pulumi-azure-native storage.BlobContainer, container_name)
        if not CONTAINER_NAME.fullmatch(container):
            raise fail("storage", "storage.containers", f"{container!r} is not a Blob Storage container name, which "
                       "Azure refuses when the program creates the container", "use 3-63 lower-case letters, digits "
                       "and single hyphens, starting and ending with a letter or digit (e.g. raw-events)")
    if len(set(containers)) != len(containers):
        twice = next(c for c in containers if containers.count(c) > 1)
        raise fail("storage", "storage.containers", f"container {twice!r} is listed twice",
                   f"list {twice!r} once")
    if not containers:
        raise fail("storage", "storage.containers", "no containers listed", "list the containers the rules act on")
    for container in containers:
        if container in PROTECTED_CONTAINERS:
            raise fail("storage", "storage.containers", f"container {container!r} is not governed by lifecycle "
                       f"rules: {PROTECTED_CONTAINERS[container]}", f"remove {container!r} from storage.containers "
                       "(the Pulumi program creates it outside the data account)")
    return redundancy, containers


def _validate_minimums(raw: Any, fail: _Refusal) -> dict[str, int]:
    """The compliance floors: days below which no rule or table retention may go."""
    if not isinstance(raw, dict):
        raise fail("minimum_retention_days", "minimum_retention_days", "must be a mapping of name to days",
                   "write e.g. minimum_retention_days: {raw_events: 2555}")
    unknown = set(raw) - MINIMUM_KEYS
    if unknown:
        raise fail("minimum_retention_days", f"minimum_retention_days.{sorted(unknown)[0]}", "unknown key",
                   f"use only {', '.join(sorted(MINIMUM_KEYS))}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("minimum_retention_days", f"minimum_retention_days.{key}",
                       f"must be a whole number of days >= 0, got {value!r}", f"write e.g. {key}: 365")
    return dict(raw)


def _validate_rule(r: Any, i: int, fail: _Refusal, *, redundancy: str, containers: tuple[str, ...],
                   minimums: dict[str, int], taken: set[str]) -> BlobRule:
    name = r.get("name") if isinstance(r, dict) else None
    where = f"rule '{name}'" if name else f"blob_rules[{i}]"
    if not isinstance(r, dict) or not isinstance(name, str) or not name:
        raise fail("blob_rules", where, "every rule needs a name", "add 'name: <what the rule is for>'")
    unknown = set(r) - RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail("blob_rules", where, f"unknown key '{key}'", f"use only {', '.join(sorted(RULE_KEYS))}")
    if name in taken:
        raise fail("blob_rules", where, "the name is used twice", "give each rule a unique name")
    container = r.get("container")
    if container in PROTECTED_CONTAINERS:
        raise fail("blob_rules", where, f"container {container!r} may not have a lifecycle rule: "
                   f"{PROTECTED_CONTAINERS[container]}", f"remove rule '{name}'; old packages need no rule "
                   "(each publish replaces the package)")
    if container not in containers:
        raise fail("blob_rules", where, f"container {container!r} is not one of the account's containers "
                   f"({', '.join(containers)})", "name an existing container, or add it to storage.containers")
    prefix = r.get("prefix", "")
    if not isinstance(prefix, str) or prefix.startswith("/"):
        raise fail("blob_rules", where, f"prefix {prefix!r} must be a path inside the container",
                   "write e.g. prefix: raw_events/ (no leading slash, no container name)")
    days: dict[str, int] = {}
    for tier in TIERS:
        key = f"{tier}_after_days"
        if key in r:
            value = r[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail("blob_rules", where, f"{key} must be a whole number of days >= 0, got {value!r}",
                           f"write e.g. {key}: 90")
            if value > MAX_RETENTION_DAYS:
                raise fail("blob_rules", where, f"{key} {value} is more than {MAX_RETENTION_DAYS} days (100 years)",
                           f"write at most {key}: {MAX_RETENTION_DAYS}, or leave {key} out to never do it")
            days[tier] = value
    if not days:
        raise fail("blob_rules", where, "no action", "set at least one of " +
                   ", ".join(f"{t}_after_days" for t in TIERS))
    ordered = [t for t in TIERS if t in days]
    for a, b in itertools.pairwise(ordered):
        if days[a] >= days[b]:
            raise fail("blob_rules", where, f"{a}_after_days ({days[a]}) must be less than {b}_after_days "
                       f"({days[b]})", f"tiers go cool < cold < archive < delete; raise {b}_after_days above "
                       f"{days[a]}")
    if "archive" in days and redundancy in NO_ARCHIVE_REDUNDANCY:
        raise fail("blob_rules", where, f"the archive tier is not available on {redundancy} accounts",
                   "use Standard_LRS, Standard_GRS or Standard_RAGRS in storage.redundancy, or tier to cold "
                   "instead of archive")
    for key in ("enabled", "allow_early_deletion"):
        if key in r and not isinstance(r[key], bool):
            raise fail("blob_rules", where, f"{key} must be true or false, got {_shape(r[key])}",
                       f"write {key}: true or {key}: false, unquoted")
    if "delete" in days and not r.get("allow_early_deletion", False):
        for tier, minimum in EARLY_DELETION_DAYS.items():
            if tier in days and days["delete"] - days[tier] < minimum:
                raise fail("blob_rules", where, f"deleting {days['delete'] - days[tier]} days after moving to "
                           f"{tier} falls inside its {minimum}-day early-deletion window (charged as if kept "
                           f"{minimum} days)", f"set delete_after_days >= {days[tier] + minimum}, or "
                           "allow_early_deletion: true if the charge is intended")
    if (reaches_raw_archive(container, prefix) or reaches_staged_raw_events(container, prefix)) and "delete" in days:
        # any rule that matches raw archive blobs, also one on a shorter prefix or the whole container,
        # or on the staged compaction outputs (raw events too, maybe their only copy)
        floor = minimums.get("raw_events")
        if floor is not None and days["delete"] < floor:
            raise fail("blob_rules", where, f"delete_after_days {days['delete']} is below the minimum retention "
                       f"of {floor} days for raw events", f"keep raw events at least {floor} days, or lower "
                       "minimum_retention_days.raw_events with the compliance owner's approval")
    return BlobRule(name=name, container=container, prefix=prefix, days=days, enabled=r.get("enabled", True))


def _validate_tables(tables_raw: dict[str, Any], fail: _Refusal, *, minimums: dict[str, int]) -> dict[str, int]:
    unknown = set(tables_raw) - set(TABLES)
    if unknown:
        raise fail("tables", f"tables.{sorted(unknown)[0]}", "unknown table", f"use only {', '.join(TABLES)}")
    tables: dict[str, int] = {}
    for table in TABLES:
        value = tables_raw.get(table)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("tables", f"tables.{table}", f"retention must be a whole number of days >= 1, got {value!r}",
                       f"write e.g. {table}: 35")
        if value > MAX_RETENTION_DAYS:
            raise fail("tables", f"tables.{table}", f"{value} days is more than {MAX_RETENTION_DAYS} days (100 years)",
                       f"write at most {table}: {MAX_RETENTION_DAYS}")
        floor = minimums.get(table)
        if floor is not None and value < floor:
            raise fail("tables", f"tables.{table}", f"{value} days is below the minimum retention of {floor} days",
                       f"keep {table} at least {floor} days, or lower minimum_retention_days.{table}")
        tables[table] = value
    if tables["ingested_events"] < tables["dynamic_metrics"]:
        raise fail("tables", "tables.ingested_events", f"{tables['ingested_events']} days is shorter than "
                   f"dynamic_metrics ({tables['dynamic_metrics']}): redelivered events older than the ledger would "
                   "be counted twice", f"set ingested_events to at least {tables['dynamic_metrics']}")
    return tables


def render_management_policy(policy: Policy) -> dict[str, Any]:
    """The storage account management policy (Microsoft.Storage/storageAccounts/managementPolicies)
    `properties.policy` document, in ARM's camelCase shape."""
    rules = []
    for rule in policy.blob_rules:
        if rule.container in PROTECTED_CONTAINERS or not rule.container:
            # a Policy built by hand skips validate(); the rendered policy must still never reach it
            raise LifecycleError(f"{policy.files[-1] if policy.files else 'policy'}: rule '{rule.name}': container "
                                 f"{rule.container!r} may not have a lifecycle rule; fix: remove the rule")
        base_blob = {ARM_ACTION[t]: {"daysAfterModificationGreaterThan": d} for t, d in rule.days.items()}
        rules.append({
            "enabled": rule.enabled,
            "name": rule.name,
            "type": "Lifecycle",
            "definition": {
                "actions": {"baseBlob": base_blob},
                "filters": {"blobTypes": ["blockBlob"], "prefixMatch": list(rule.full_prefixes)},
            },
        })
    return {"rules": rules}


def to_snake(value: Any) -> Any:
    """ARM camelCase keys -> the snake_case keys Pulumi's Python SDK takes."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): to_snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_snake(v) for v in value]
    return value


def table_retention(policy: Policy) -> dict[str, int]:
    """PostgreSQL retention in days per table, as txmetrics.retention.enforce takes it. The raw
    file manifest follows the raw archive's delete rule (its rows go when the blobs go)."""
    out = dict(policy.tables)
    # the first rule to delete raw archive blobs decides (a disabled rule deletes nothing)
    deletes = [rule.days["delete"] for rule in policy.blob_rules
               if rule.enabled and "delete" in rule.days and reaches_raw_archive(rule.container, rule.prefix)]
    if deletes:
        out["raw_files"] = min(deletes)
    return out


def table_retention_setting(policy: Policy) -> str:
    """The PostgreSQL retention as the JSON app setting the daily retention function reads."""
    import json

    return json.dumps(table_retention(policy), sort_keys=True)

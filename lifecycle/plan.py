"""What a retention policy will do by a given date, from the real inventory.

Blob side: every blob under each rule's container/prefixes (name, size, last modified, tier)
is matched against the rule as Azure's lifecycle engine would: the furthest action whose
`daysAfterModificationGreaterThan` the blob's age exceeds (delete beats archive beats cold
beats cool); a blob already in that tier needs nothing. `simulate()` applies the blob
actions on the storage account itself (Azurite does not run lifecycle rules), so their
effect can be tested and seen.

Table side: the day partitions of dynamic_metrics / ingested_events that would be dropped,
and the rows of failed_items / aggregate_histograms / raw_files that would be deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from azure.storage.blob import BlobServiceClient

from txmetrics.adapters import partitions
from txmetrics.adapters.blob import BlobArchive, BlobInfo
from txmetrics.retention import expiry

from .policy import ACCESS_TIER, ARM_ACTION, TIERS, Policy, table_retention

_TIER_RANK = {"Hot": 0, "Cool": 1, "Cold": 2, "Archive": 3}
_TIER_OF_ACTION = {ARM_ACTION[tier]: access for tier, access in ACCESS_TIER.items()}   # tierToCool -> Cool


@dataclass
class BlobAction:
    rule: str
    prefix: str            # the rule's prefixes (container/path), comma-separated
    action: str            # tierToCool, tierToCold, tierToArchive, delete
    blobs: list[tuple[str, int]] = field(default_factory=list)   # (name, bytes)

    @property
    def count(self) -> int:
        return len(self.blobs)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.blobs)


@dataclass
class Plan:
    stack: str
    at: datetime
    blob_actions: list[BlobAction]
    unchanged_blobs: int
    dropped_partitions: dict[str, list[str]]
    deleted_rows: dict[str, int]

    def action(self, rule: str, action: str) -> BlobAction | None:
        return next((a for a in self.blob_actions if a.rule == rule and a.action == action), None)

    def rows(self) -> list[dict[str, Any]]:
        """The plan as rows of the same fields (what `txmetrics lifecycle plan` prints):
        store, rule, target, action, count, bytes, items (the partitions a drop names)."""
        out: list[dict[str, Any]] = [
            {"store": "blob", "rule": a.rule, "target": a.prefix, "action": a.action, "count": a.count,
             "bytes": a.bytes, "items": []} for a in self.blob_actions]
        if self.blob_actions or self.unchanged_blobs:
            out.append({"store": "blob", "rule": None, "target": "(every rule)", "action": "none due",
                        "count": self.unchanged_blobs, "bytes": None, "items": []})
        out += table_rows(self.dropped_partitions, self.deleted_rows)
        return out


def table_rows(dropped: dict[str, list[str]], deleted: dict[str, int]) -> list[dict[str, Any]]:
    """PostgreSQL retention as plan rows: the day partitions dropped and the rows deleted."""
    out: list[dict[str, Any]] = [
        {"store": "postgresql", "rule": f"tables.{table}", "target": table, "action": "drop partitions",
         "count": len(parts), "bytes": None, "items": list(parts)} for table, parts in dropped.items()]
    out += [{"store": "postgresql", "rule": f"tables.{table}", "target": table, "action": "delete rows",
             "count": n, "bytes": None, "items": []} for table, n in deleted.items()]
    return out


def due_action(rule_days: dict[str, int], age_days: float, current_tier: str | None) -> str | None:
    """The action Azure would take on a blob of this age, or None."""
    for tier in reversed(TIERS):
        days = rule_days.get(tier)
        if days is not None and age_days > days:
            if tier == "delete":
                return "delete"
            if _TIER_RANK.get(current_tier or "Hot", 0) >= _TIER_RANK[ACCESS_TIER[tier]]:
                return None       # already there (or colder)
            return ARM_ACTION[tier]
    return None


Inventory = dict[str, list[BlobInfo]]       # rule name -> the blobs under its container/prefix


def inventory(policy: Policy, service: BlobServiceClient) -> Inventory:
    """The blobs each enabled rule covers, listed once (a rule whose container does not
    exist covers none)."""
    listed: Inventory = {}
    for rule in policy.blob_rules:
        if not rule.enabled:
            continue
        archive = BlobArchive(service, rule.container)
        exists = archive.exists()
        listed[rule.name] = [b for p in rule.prefixes for b in archive.list(p)] if exists else []
    return listed


# "If you define more than one action on the same blob, lifecycle management applies the least
# expensive action to the blob. For example, action delete is cheaper than action tierToArchive.
# Action tierToArchive is cheaper than action tierToCool." (Learn, "Configure a lifecycle
# management policy"); among rules of the same cost, the first defined.
_ACTION_COST = {ARM_ACTION[tier]: cost for cost, tier in enumerate(reversed(TIERS))}   # delete 0 ... tierToCool 3


def plan_blobs(policy: Policy, listed: Inventory, at: datetime) -> tuple[list[BlobAction], int]:
    """The blob actions due at `at`, per (rule, action), and how many blobs need none. A blob
    that more than one enabled rule covers (or one rule by two prefixes) gets one action, the
    least expensive of those due, as Azure applies it (`_ACTION_COST`), under the first rule
    that gives it."""
    chosen: dict[tuple[str, str], tuple[str, str, BlobInfo] | None] = {}   # (container, blob) -> (rule, action, blob)
    for rule in policy.blob_rules:
        if not rule.enabled:
            continue
        for blob in listed.get(rule.name, []):
            age = (at - blob.last_modified).total_seconds() / 86400
            action = due_action(rule.days, age, blob.tier)
            key, held = (rule.container, blob.name), chosen.get((rule.container, blob.name))
            if action is not None and (held is None or _ACTION_COST[action] < _ACTION_COST[held[1]]):
                chosen[key] = (rule.name, action, blob)
            elif key not in chosen:
                chosen[key] = None
    actions: dict[tuple[str, str], BlobAction] = {}
    for entry in chosen.values():
        if entry is None:
            continue
        rule_name, action, blob = entry
        if (rule_name, action) not in actions:
            actions[(rule_name, action)] = BlobAction(rule=rule_name, prefix=", ".join(policy.rule(rule_name).full_prefixes),
                                                      action=action)
        actions[(rule_name, action)].blobs.append((blob.name, blob.size))
    unchanged = sum(1 for entry in chosen.values() if entry is None)
    return sorted(actions.values(), key=lambda a: (a.rule, a.action)), unchanged


def plan_tables(policy: Policy, conn: psycopg.Connection, at: date) -> tuple[dict[str, list[str]], dict[str, int]]:
    due = expiry(table_retention(policy), at)         # what txmetrics.retention.enforce will act on
    dropped = {table: partitions.expired_partitions(conn, table=table, cutoff=before)
               for table, before in due.partitions.items()}
    deleted = {t.name: partitions.count_expired_rows(conn, table=t, cutoff=before) for t, before in due.rows.items()}
    return dropped, deleted


def make_plan(policy: Policy, at: datetime, service: BlobServiceClient | None = None,
              conn: psycopg.Connection | None = None) -> Plan:
    """What `policy` will have done by `at`: the blob actions from the inventory of
    `service` (none without it), the table retention from `conn` (none without it)."""
    return make_plans(policy, [at], service=service, conn=conn)[0]


def make_plans(policy: Policy, ats: Sequence[datetime], *, service: BlobServiceClient | None = None,
               conn: psycopg.Connection | None = None) -> list[Plan]:
    """`make_plan` at each of `ats`, the blobs listed once for all of them."""
    listed = inventory(policy, service) if service is not None else None
    plans = []
    for at in ats:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        blob_actions, unchanged = plan_blobs(policy, listed, at) if listed is not None else ([], 0)
        dropped, deleted = plan_tables(policy, conn, at.date()) if conn is not None else ({}, {})
        plans.append(Plan(stack=policy.stack, at=at, blob_actions=blob_actions, unchanged_blobs=unchanged,
                          dropped_partitions=dropped, deleted_rows=deleted))
    return plans


def simulate(plan: Plan, policy: Policy, service: BlobServiceClient) -> dict[str, int]:
    """Apply the plan's blob actions (set tier / delete), as the lifecycle engine would."""
    done: dict[str, int] = {}
    for action in plan.blob_actions:
        archive = BlobArchive(service, policy.rule(action.rule).container)
        for name, _ in action.blobs:
            if action.action == ARM_ACTION["delete"]:
                archive.delete(name, missing_ok=False)
            else:
                archive.set_tier(name, _TIER_OF_ACTION[action.action])
            done[action.action] = done.get(action.action, 0) + 1
    return done

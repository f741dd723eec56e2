"""Retention as code: `lifecycle validate|render|plan` (the policies in lifecycle/) and
`retention apply` (what the daily function does to PostgreSQL). Every command takes a
known stack only (a Pulumi.<stack>.yaml exists); `retention apply` prints what it will
drop before it drops anything, and `--dry-run` stops there."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import context
from .output import FormatOption, TableView, cell, emit, note
from .parsing import complete_stack, parse_day

if TYPE_CHECKING:
    from lifecycle.policy import Policy

lifecycle_app = typer.Typer(no_args_is_help=True,
                            help="Retention policies: validate, render, plan.\n\nThe policies in lifecycle/, "
                                 "per stack.")
retention_app = typer.Typer(no_args_is_help=True, help="PostgreSQL retention (the daily job).")

PLAN_COLUMNS = ("store", "rule", "target", "action", "count", "bytes", "items")


StackOption = Annotated[str, typer.Option(
    metavar="STACK", autocompletion=complete_stack, help="a Pulumi stack of this project (dev, prod, ...)")]


def _policy(stack: str) -> Policy:
    from lifecycle.policy import load_policy

    return load_policy(stack)


def _plan_view() -> TableView:
    def cells(row: Mapping[str, Any]) -> list[str]:
        items = list(row["items"] or [])
        shown = " ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        return [str(row["store"]), cell(row["rule"]), str(row["target"]), str(row["action"]), cell(row["count"]),
                cell(row["bytes"]), shown]
    return TableView(PLAN_COLUMNS, cells, right=frozenset({"count", "bytes"}))


@lifecycle_app.command("validate")
def lifecycle_validate(stack: StackOption = "dev") -> None:
    """Validate a stack's policy.

    lifecycle/base.yaml and the stack's override; a bad policy is refused with the file,
    the rule and the fix."""
    policy = _policy(stack)
    note(f"{stack}: valid ({', '.join(policy.files)})")


@lifecycle_app.command("render")
def lifecycle_render(stack: StackOption = "dev") -> None:
    """Print the policy Pulumi applies.

    The storage management policy (ARM JSON) and the table retention in days."""
    import json

    from lifecycle.policy import render_management_policy, table_retention

    policy = _policy(stack)
    typer.echo(json.dumps({"managementPolicy": render_management_policy(policy),
                           "tableRetentionDays": table_retention(policy)}, indent=2))


@lifecycle_app.command("plan")
def lifecycle_plan(stack: StackOption = "dev",
                   at: Annotated[datetime | None, typer.Option(
                       parser=parse_day, metavar="DATE", help="UTC date to plan for, e.g. 2027-03-01 (default: today)")]
                   = None,
                   simulate: Annotated[bool, typer.Option(
                       "--simulate", help="apply the blob actions on the storage account (for Azurite, which runs no "
                                          "lifecycle rules); never against production")] = False,
                   tables: Annotated[bool, typer.Option(help="include the PostgreSQL tables")] = True,
                   fmt: FormatOption = "table") -> None:
    """Show what the policy will do by a date.

    From the real inventory: blobs and bytes per rule and action, day partitions
    dropped, rows deleted."""
    from lifecycle.plan import make_plan
    from lifecycle.plan import simulate as run_simulation

    policy = _policy(stack)
    when = at or datetime.now(UTC)
    service = context.storage_service()
    if tables:
        with context.connect() as conn:
            plan = make_plan(policy, when, service=service, conn=conn)
    else:
        plan = make_plan(policy, when, service=service)
    emit(plan.rows(), fmt, table=_plan_view(), columns=PLAN_COLUMNS)
    note(f"lifecycle plan for {stack} at {plan.at:%Y-%m-%d}")
    if simulate:
        done = run_simulation(plan, policy, service)
        note(f"simulated: {dict(sorted(done.items()))}")


@retention_app.command("apply")
def retention_apply(stack: StackOption = "dev",
                    today: Annotated[datetime | None, typer.Option(
                        parser=parse_day, metavar="DATE", help="UTC date to apply as of (default: today)")] = None,
                    dry_run: Annotated[bool, typer.Option(
                        "--dry-run", help="print what would be dropped and deleted, and change nothing")] = False,
                    fmt: FormatOption = "table") -> None:
    """Enforce the stack's table retention now.

    Creates day partitions ahead, then drops the partitions and deletes the rows past
    the stack's retention (idempotent). Prints what it will drop first; --dry-run stops
    there."""
    from lifecycle.plan import plan_tables, table_rows
    from lifecycle.policy import table_retention
    from txmetrics.retention import enforce

    policy = _policy(stack)
    day = (today or datetime.now(UTC)).date()
    if day > datetime.now(UTC).date() and not dry_run:
        # as of a later date it drops what the policy still keeps, and moves the ledger's first
        # day (retention_horizons, forward only) past today: live events would be refused
        from txmetrics.errors import InvalidRequestError

        raise InvalidRequestError(
            f"--today {day} is after today ({datetime.now(UTC).date()}): retention as of a later date drops what "
            "the policy still keeps, and moves the ledger's first day past today (the function would refuse live "
            "events as past_retention); fix: give a date up to today, or preview a later one with --dry-run or "
            f"`txmetrics lifecycle plan --stack {stack} --at {day}`")
    with context.connect(autocommit=True) as conn:
        dropped, deleted = plan_tables(policy, conn, day)
        emit(table_rows(dropped, deleted), fmt, table=_plan_view(), columns=PLAN_COLUMNS)
        if dry_run:
            note(f"dry run for {stack} as of {day}: nothing changed")
            return
        report = enforce(conn, table_retention(policy), day)
    note(f"{stack} as of {day}: created {report.created_partitions} partition(s); dropped "
         f"{len(report.dropped_partitions)} partition(s); deleted rows "
         f"{', '.join(f'{t} {n}' for t, n in report.deleted_rows.items()) or 'none'}")

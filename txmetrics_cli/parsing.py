"""Option values users type: times and dates (UTC unless an offset is given), DIM=VALUE
filters. A value that does not parse is a usage error (typer.BadParameter: one line, exit
code 2, naming the option). StartOption and EndOption: the required time range, the same
in every command that takes one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from txmetrics.core.naming import as_utc


def parse_time(value: str | datetime) -> datetime:
    """2026-03-01, 2026-03-01T10:00, 2026-03-01 10:00:00Z or with an offset (+05:30)."""
    if isinstance(value, datetime):
        return value
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date or time: write e.g. 2026-03-01 or 2026-03-01T10:00 "
                         "(UTC unless an offset such as +05:30 is given)") from None
    return as_utc(moment)


def parse_day(value: str | datetime) -> datetime:
    """A UTC date (2026-03-01), as midnight UTC."""
    if isinstance(value, datetime):
        return value
    try:
        moment = parse_time(value)
    except typer.BadParameter:     # a date is asked for: suggest one, not a time
        raise typer.BadParameter(f"{value!r} is not a date: write e.g. 2026-03-01") from None
    if (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0):
        raise typer.BadParameter(f"{value!r} is not a date: write e.g. 2026-03-01")
    return moment.astimezone(UTC)


def parse_filter(value: str) -> tuple[str, str]:
    """DIM=VALUE."""
    name, sep, wanted = value.partition("=")
    if not sep or not name.strip():
        raise typer.BadParameter(f"{value!r} is not DIM=VALUE: write e.g. payment_method=card",
                                 param_hint="'--where'")
    return name.strip(), wanted


StartOption = Annotated[datetime, typer.Option(
    parser=parse_time, metavar="TIME",
    help="start, inclusive: 2026-03-01 or 2026-03-01T10:00 (UTC unless an offset is given; kpi and "
         "report: on a 5-minute mark)")]
EndOption = Annotated[datetime, typer.Option(parser=parse_time, metavar="TIME", help="end, exclusive")]


def complete_stack(incomplete: str) -> list[str]:
    """Shell completion of --stack: the Pulumi stacks of this project (Pulumi.<stack>.yaml)."""
    from lifecycle.policy import PROJECT_DIR, known_stacks

    return [s for s in known_stacks(PROJECT_DIR) if s.startswith(incomplete)]

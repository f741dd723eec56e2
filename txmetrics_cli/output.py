"""Rows out: every command that prints rows takes ``--format table|json|csv`` (contract
section 6) and writes them through `RowWriter`.

- table: for people. A header, one line per row; at a terminal as wide as the terminal,
  piped as wide as the rows need, so a row never wraps into two lines.
- json: one array of objects, one object per row (one per line), field names as keys,
  numbers as JSON numbers (exact decimals stay exact), times as ISO 8601 strings.
- csv: a header, then one record per row (RFC 4180 quoting).

Messages about the rows (how many, what was skipped) go to stderr, so stdout stays
machine-readable.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Annotated, Any, Literal

import typer

Format = Literal["table", "json", "csv"]
FormatOption = Annotated[Format, typer.Option(
    "--format", help="table (for people), json (one array of objects) or csv")]
PIPED_WIDTH = 1_000_000       # rich wraps at the console width; piped output must not wrap


def console(*, stderr: bool = False) -> Any:
    """A rich console for stdout (or stderr): the terminal's width, or no wrapping when piped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else PIPED_WIDTH, soft_wrap=not stream.isatty(),
                   highlight=False)


def note(message: str) -> None:
    """A message about the output, on stderr (one line, never wrapped)."""
    typer.echo(message, err=True)


@dataclass(frozen=True)
class TableView:
    """How rows look in a table: column headers and a function giving each row's cells."""

    columns: Sequence[str]
    cells: Callable[[Mapping[str, Any]], Sequence[str]]
    right: frozenset[str] = frozenset()      # columns aligned right (numbers)


def cell(value: Any) -> str:
    """A value as a table shows it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        return f"{value:,.2f}" if value != value.to_integral_value() else f"{int(value):,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def decimal_text(value: Decimal) -> str:
    """An exact decimal in plain notation without the stored scale's trailing zeros
    (`9007199254741007.000000000` -> `9007199254741007`, `12.300000000` -> `12.3`): a JSON
    reader then takes a whole sum for an integer, exact at any size, where the zeros made it
    a double (2^53 + 15 read as 2^53 + 16). Not `normalize()`, which rounds to 28 digits."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def json_value(value: Any) -> str:
    """One value as JSON text: exact decimals as numbers, NaN as null, times as ISO strings."""
    if isinstance(value, Decimal):
        return decimal_text(value) if value.is_finite() else "null"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "null"
    if isinstance(value, datetime | date):
        return json.dumps(value.isoformat())
    if isinstance(value, bytes):
        return json.dumps(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json_object(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def json_object(row: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {json_value(v)}" for k, v in row.items()) + "}"


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_text(value) if value.is_finite() else ""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json_object(value)
    return str(value)


class RowWriter:
    """Writes rows in one format as they come (json and csv stream; a table is drawn at
    `close`, once its column widths are known)."""

    def __init__(self, fmt: str, *, table: TableView | None = None, file: IO[str] | None = None,
                 jsonl: bool = False) -> None:
        self.fmt = fmt
        self.table = table
        self.file = file
        self.jsonl = jsonl
        self.rows = 0
        self._columns: list[str] | None = None
        self._csv: Any = None
        self._held: list[Mapping[str, Any]] = []

    @property
    def out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stdout

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            if self.fmt == "table":
                self._held.append(row)
            elif self.fmt == "json" and self.jsonl:
                self.out.write(json_object(row) + "\n")
            elif self.fmt == "json":
                self.out.write(("[\n" if self.rows == 0 else ",\n") + json_object(row))
            else:
                if self._csv is None:
                    self._columns = list(row)
                    self._csv = csv.writer(self.out, lineterminator="\n")
                    self._csv.writerow(self._columns)
                assert self._columns is not None
                self._csv.writerow([csv_value(row.get(c)) for c in self._columns])
            self.rows += 1

    def close(self, *, columns: Sequence[str] = ()) -> None:
        """Finish the output; `columns` gives the csv header when there were no rows."""
        if self.fmt == "json" and not self.jsonl:
            self.out.write("[]\n" if self.rows == 0 else "\n]\n")
        elif self.fmt == "csv" and self.rows == 0 and columns:
            csv.writer(self.out, lineterminator="\n").writerow(list(columns))
        elif self.fmt == "table":
            self._draw()
        self.out.flush()

    def _draw(self) -> None:
        from rich import box
        from rich.table import Table

        view = self.table or _plain_view(self._held)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in view.columns:
            table.add_column(column, justify="right" if column in view.right else "left", no_wrap=True)
        for row in self._held:
            table.add_row(*view.cells(row))
        if self.file is not None:
            from rich.console import Console

            Console(file=self.file, width=PIPED_WIDTH, highlight=False).print(table)
        else:
            console().print(table)


def _plain_view(rows: Sequence[Mapping[str, Any]]) -> TableView:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    numeric = frozenset(c for c in columns if any(isinstance(r.get(c), int | float | Decimal)
                                                   and not isinstance(r.get(c), bool) for r in rows))
    return TableView(columns=columns, cells=lambda row: [cell(row.get(c)) for c in columns], right=numeric)


def emit(rows: Iterable[Mapping[str, Any]], fmt: str, *, table: TableView | None = None,
         columns: Sequence[str] = ()) -> int:
    """Write all rows in `fmt`; returns how many."""
    writer = RowWriter(fmt, table=table)
    writer.write(rows)
    writer.close(columns=columns)
    return writer.rows

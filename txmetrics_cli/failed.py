"""Failed items: list, show, fix, set, replay, resolve (txmetrics.replay does the work)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoSuchOption  # typer's own click, whose parser raises it
from typer.core import TyperCommand

from . import context
from .output import FormatOption, TableView, cell, emit, note

app = typer.Typer(no_args_is_help=True, help="Failed items: list, show, fix, replay.\n\nBad events with their error code and masked payload: "
                       "list, show, fix, set, replay, resolve.")

LIST_COLUMNS = ("id", "error_code", "event_id", "partition_id", "sequence_number", "received_at", "replayed",
                "resolved", "detail")
ItemId = Annotated[int, typer.Argument(metavar="ID", help="the failed item's id (see `txmetrics failed list`)")]


def _state(row: dict[str, Any]) -> str:
    return "resolved" if row.get("resolved") else "replayed" if row.get("replayed") else "open"


@app.command("list")
def failed_list(code: Annotated[str | None, typer.Option(metavar="CODE", help="only this error code")] = None,
                all_items: Annotated[bool, typer.Option("--all", help="include replayed and resolved items")] = False,
                limit: Annotated[int, typer.Option(min=1, metavar="N", help="at most N items")] = 50,
                fmt: FormatOption = "table") -> None:
    """List failed items, oldest first.

    Open ones (neither replayed nor resolved) unless --all."""
    from txmetrics import replay

    with context.connect() as conn:
        items = replay.list_items(conn, error_code=code, include_done=all_items, limit=limit)
        # a code no item has says so (a misspelt code would look like an empty queue)
        why = replay.codes_note(conn, code, include_done=all_items) if not items and code is not None else ""
    columns = ("id", "error_code", "event_id", "received_at", "state", "detail")
    emit(items, fmt, columns=LIST_COLUMNS,
         table=TableView(columns, lambda r: [cell(r["id"]), r["error_code"], cell(r["event_id"]),
                                             cell(r["received_at"]), _state(dict(r)), cell(r["detail"])],
                         right=frozenset({"id"})))
    if len(items) == limit:
        note(f"showing the first {limit} item(s): --limit N for more")
    if why:
        note(why)


@app.command("show")
def failed_show(item_id: ItemId, fmt: FormatOption = "table") -> None:
    """Show one failed item.

    Everything stored about it: origin, error, masked payload, replay state."""
    from txmetrics import replay

    with context.connect() as conn:
        item = replay.show(conn, item_id)
    if fmt == "table":
        emit(({"field": k, "value": v} for k, v in item.items()), fmt,
             table=TableView(("field", "value"), lambda r: [r["field"], cell(r["value"])]))
    else:
        emit([item], fmt)


@app.command("fix")
def failed_fix(item_id: ItemId,
               payload_file: Annotated[Path, typer.Option(
                   exists=True, dir_okay=False, readable=True, metavar="FILE",
                   help="file with the corrected event (a JSON object)")]) -> None:
    """Store a corrected payload for an item.

    The original stays; replay the item afterwards. A file that is not a JSON object is
    refused and nothing is stored."""
    from txmetrics import replay

    text = payload_file.read_text(encoding="utf-8")
    with context.connect() as conn:
        replay.fix(conn, item_id, text, source=str(payload_file))
    note(f"item {item_id}: corrected payload stored; replay it with `txmetrics failed replay {item_id}`")


_NEGATIVE_NUMBER = re.compile(r"-\.?[0-9]")       # -5, -0.5, -1e3 (-.5 too, kept as text: no JSON number)


class _NegativeValueCommand(TyperCommand):
    """`failed set ID amount -5`: a token that writes a negative number is a value, not an
    option (click said "No such option: -5"); any other token starting with a dash is still
    an option, so a misspelt one is refused, never stored as the value, and the refusal says
    how to set such a value: after `--`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:   # typer's own click Context
        if "--" not in args:
            for i, arg in enumerate(args):
                if _NEGATIVE_NUMBER.match(arg):
                    args = [*args[:i], "--", *args[i:]]
                    break
        given = list(args)             # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:
            # the token as typed: click names only what it matched of it ("-a" of "-abc", the
            # name before "=" of "--note=x"), and the hint's command must set the whole value
            name = exc.option_name
            typed = next((a for a in given if a != "--" and (a == name or a.startswith(
                f"{name}=" if name.startswith("--") else name))), name)
            exc.message += (f"; to set a value that starts with a dash, put -- before the arguments: "
                            f"txmetrics failed set -- ID FIELD {shlex.quote(typed)}")
            raise


@app.command("set", cls=_NegativeValueCommand)
def failed_set(item_id: ItemId,
               field: Annotated[str, typer.Argument(metavar="FIELD", help="dotted field path, e.g. card.network")],
               value: Annotated[str, typer.Argument(
                   metavar="VALUE", help="JSON if it parses (12.5, true, {...}), else a string; null removes it")]
               ) -> None:
    """Set one field of an item's payload.

    Prints the payload as stored."""
    from txmetrics import replay
    from txmetrics.core.catalog import load_catalog

    # the catalog's extra_fields are top-level fields of the producer's own, meant as named
    meant = load_catalog(context.settings().metric_catalog).extra_fields
    with context.connect() as conn:
        typer.echo(replay.set_field(conn, item_id, field, replay.parse_value(value), extra_fields=meant))


@app.command("replay")
def failed_replay(ids: Annotated[list[int] | None, typer.Argument(
                      metavar="[ID]...", help="items to replay (or --code)")] = None,
                  code: Annotated[str | None, typer.Option(
                      metavar="CODE", help="replay every open item with this error code")] = None,
                  force: Annotated[bool, typer.Option("--force", help="replay items already replayed")] = False,
                  fmt: FormatOption = "table") -> None:
    """Replay items through the ingest path.

    Deduplication still holds: replaying twice, or an event the producer re-sent
    meanwhile, adds nothing."""
    from txmetrics import replay
    from txmetrics.pipeline import Pipeline

    pipeline = Pipeline.from_settings(context.settings())
    try:
        with context.connect() as conn:
            outcomes = replay.replay(conn, pipeline, item_ids=list(ids or []), error_code=code, force=force)
            why = replay.codes_note(conn, code, include_done=False) if not outcomes and code is not None else ""
    finally:
        pipeline.store.close()
    emit(({"id": o.item_id, "replayed": o.replayed, "note": o.note} for o in outcomes), fmt,
         columns=("id", "replayed", "note"))
    if not outcomes:
        note(f"nothing to replay: {why or 'no open item matches'}")


@app.command("resolve")
def failed_resolve(ids: Annotated[list[int], typer.Argument(metavar="ID...", help="items to close")],
                   note_text: Annotated[str, typer.Option(
                       "--note", metavar="TEXT", help="why (kept in replay_note)")] = "resolved without replay") -> None:
    """Close items without replaying them.

    For items that should never be ingested (e.g. test traffic)."""
    from txmetrics import replay

    with context.connect() as conn:
        note(f"{replay.resolve(conn, ids, note_text)} item(s) resolved")

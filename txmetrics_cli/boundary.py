"""The command line's one error boundary.

Every error a user can cause or fix (a bad option or date, an unknown metric, stack or
failed-item id, a database or storage account that cannot be reached, a missing or
unreadable file, a payload that is not JSON) ends the command with one line on stderr,
``txmetrics: error: ...``, and exit code 2. The domain errors come from the core as
specific classes (txmetrics.errors); this module is the only place that turns them into
messages. ``--debug`` (or TXMETRICS_DEBUG=1) prints the traceback first. Anything not
recognised here is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

PROGRAM = "txmetrics"
ERROR_EXIT_CODE = 2


class CommandFailed(typer.TyperException):
    """A domain error, already described in one line."""

    exit_code = ERROR_EXIT_CODE


def describe(exc: BaseException) -> str | None:
    """One line for a domain error, or None for anything else (a bug)."""
    import psycopg
    from azure.core.exceptions import AzureError

    from lifecycle.policy import LifecycleError
    from localdev.services import ServiceError
    from txmetrics.errors import TxmetricsError

    if isinstance(exc, TxmetricsError | LifecycleError | ServiceError):
        return _one_line(str(exc))
    if isinstance(exc, psycopg.Error):
        from psycopg import errors as pg

        hint = "; the schema is missing or old: run `txmetrics migrate`" if isinstance(
            exc, pg.UndefinedTable | pg.UndefinedFunction | pg.UndefinedColumn) else ""
        return _one_line(f"PostgreSQL: {exc}") + hint
    if isinstance(exc, AzureError):
        from .context import storage_where

        try:
            where = f" at {storage_where()}"
        except Exception:  # the endpoint is a courtesy in the message
            where = ""
        reason = getattr(exc, "message", None) or str(exc)
        if getattr(exc, "error_code", None) == "ContainerNotFound":     # say which setting chose it
            return (f"Blob Storage{where}: the container does not exist; the raw events' container is "
                    "RAW_EVENTS_CONTAINER or --container (default raw-events): check its name")
        return _one_line(f"Blob Storage{where}: {reason}")
    if isinstance(exc, OSError) and exc.errno != errno.EPIPE:
        target = f"{exc.filename}: " if exc.filename else ""
        return _one_line(f"{target}{exc.strerror or exc}")
    return None


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _debug(ctx: Any) -> bool:
    import os

    return bool(ctx.params.get("debug")) or os.environ.get("TXMETRICS_DEBUG", "") not in ("", "0")


class BoundaryGroup(TyperGroup):
    """The root command group: converts domain errors raised by any command, and prints
    every error (usage errors included) as one line."""

    def invoke(self, ctx: Any) -> Any:          # a click Context (typer's own)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise
        except Exception as exc:
            message = describe(exc)
            if message is None:
                raise
            if _debug(ctx):
                traceback.print_exception(exc, file=sys.stderr)
            raise CommandFailed(message) from exc

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
            code = result if isinstance(result, int) else 0
        except typer.TyperException as exc:
            code = _report(exc)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _report(exc: typer.TyperException) -> int:
    """Print an error (usage or domain) as one line; every error exits with code 2."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":     # a bare group: its help, as click does
        typer.echo(exc.format_message(), err=True)
        return ERROR_EXIT_CODE
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(f"{PROGRAM}: error: {_one_line(exc.format_message())}{hint}", err=True)
    return ERROR_EXIT_CODE

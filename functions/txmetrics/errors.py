"""Domain errors: requests the platform refuses or cannot serve, with a message meant for
the person who made them (what is wrong, and what exists or what to do instead).

Raised by the core and the read side; only the command line turns them into output (one
line on stderr, exit code 2: txmetrics_cli/boundary.py). Anything else that escapes is a
bug and keeps its traceback. Pure: no I/O, importable from every layer.
"""

from __future__ import annotations

from urllib.parse import urlsplit


class TxmetricsError(Exception):
    """Base class: the message is complete and fit to show a user as it is."""


class InvalidRequestError(TxmetricsError, ValueError):
    """The request cannot be served as asked: an unknown metric, a grouping no stored
    dimension set can answer, a payload that is not JSON, a filter on an unknown column."""


class NotFoundError(TxmetricsError, LookupError):
    """A named thing does not exist (a failed item id, ...)."""


class UnavailableError(TxmetricsError, ConnectionError):
    """A dependency (PostgreSQL, Blob Storage) cannot be reached. The message names where
    it was looked for, never a secret."""


def describe_database(url: str) -> str:
    """Where a PostgreSQL URL or key=value DSN points (user@host:port/db), without its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # an unparsable URL is described by what can be read safely
        split = urlsplit(url)
        return f"{split.hostname or '?'}:{split.port or 5432}{split.path or ''}"
    host = str(parts.get("host") or "localhost")
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def describe_storage(connection_string: str | None, account_url: str | None) -> str:
    """Where a storage connection string or account URL points, without its account key."""
    if connection_string:
        fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
        if fields.get("BlobEndpoint"):
            return fields["BlobEndpoint"]
        account = fields.get("AccountName", "?")
        return f"https://{account}.blob.{fields.get('EndpointSuffix', 'core.windows.net')}"
    return account_url or "?"

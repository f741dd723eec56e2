"""Schema migrations (yoyo) for the pipeline's PostgreSQL database.

Used by `make migrate`, the tests, the local runner and the Pulumi migration resource.
yoyo is a deploy-time dependency only (not in the function bundle), hence the lazy import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def yoyo_url(database_url: str) -> str:
    """yoyo needs the psycopg 3 driver named in the scheme."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    return database_url


def apply_all(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the ids applied (empty when already up to date).

    Concurrent appliers are safe: yoyo serialises them on its lock table, and the loser
    finds nothing left to apply.
    """
    return _under_yoyo_lock(database_url, migrations_dir, rollback=False)


def rollback_all(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Roll back every applied migration, newest first; return the ids rolled back."""
    return _under_yoyo_lock(database_url, migrations_dir, rollback=True)


def _under_yoyo_lock(database_url: str, migrations_dir: Path, *, rollback: bool) -> list[str]:
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(migrations_dir))
        with backend.lock():
            if rollback:
                chosen = backend.to_rollback(migrations)
                backend.rollback_migrations(chosen)
            else:
                chosen = backend.to_apply(migrations)
                backend.apply_migrations(chosen)
        return [m.id for m in chosen]
    finally:
        backend.connection.close()


def migrations_digest(migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """Content hash of the migration files: what the Pulumi migration resource diffs on."""
    h = hashlib.sha256()
    for path in sorted(migrations_dir.glob("*.sql")):
        h.update(path.name.encode())
        h.update(b"\x00")
        h.update(path.read_bytes())
        h.update(b"\x00")
    return h.hexdigest()

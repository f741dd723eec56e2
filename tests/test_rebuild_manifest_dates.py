"""(Audit, round 18) after a rebuild, the raw files' manifest rows go when the blob rule
deletes their blobs (docs/retention.md), not years later."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from lifecycle.plan import due_action
from lifecycle.policy import load_policy, table_retention
from localdev.services import LocalServices
from tests.helpers import empty_tables
from txmetrics.adapters.blob import BlobArchive, BlobInfo
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.core.catalog import load_catalog
from txmetrics.rebuild import rebuild
from txmetrics.retention import enforce
from txmetrics.settings import BUNDLED_CATALOG

EVENT = {"event_id": "old-1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
         "amount": "9.99", "currency": "EUR", "payment_method": "card", "status": "approved"}


def test_a_rebuilt_file_leaves_the_manifest_when_its_blob_is_deleted(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, services: LocalServices,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive is older than the database rebuilt from it: its blob was written 200 days
    before the rebuild (a stand-in lists it so; Azurite cannot date a blob back). The dev rule
    deletes raw blobs 270 days after their modification, and retention "removes manifest rows
    of raw files the blob rule has deleted". The rebuild dated the row by the rebuild itself
    (created_at now()), so it outlived the blob by those 200 days: a live file with no blob,
    and `txmetrics backfill` of its day stops on "in the manifest as live, but its blob is
    gone" (prod: up to 7 years)."""
    deliver([EVENT], partition_id="0", first_sequence=1)
    written = datetime.now(UTC) - timedelta(days=200)
    listing = BlobArchive.list

    def aged(self: BlobArchive, prefix: str = "") -> Iterator[BlobInfo]:
        return iter([dataclasses.replace(b, last_modified=written) for b in listing(self, prefix)])

    monkeypatch.setattr(BlobArchive, "list", aged)
    (blob,) = list(archive.list("raw_events/"))
    empty_tables(db)
    store = PostgresStore(services.database_url)
    try:
        assert rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG),
                       start=date(2026, 3, 1), end=date(2026, 3, 2)).files == 1
    finally:
        store.close()
    policy = load_policy("dev")
    days = table_retention(policy)["raw_files"]
    gone_on = (written + timedelta(days=days + 1)).date()         # the blob rule has deleted it by then
    age = (datetime.combine(gone_on, datetime.min.time(), UTC) - blob.last_modified).total_seconds() / 86400
    assert due_action(policy.rule("raw-events-tiering").days, age, blob.tier) == "delete"
    enforce(db, table_retention(policy), gone_on + timedelta(days=1))
    assert db.execute("SELECT path FROM raw_files").fetchall() == []

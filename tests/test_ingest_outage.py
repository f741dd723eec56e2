"""Outages: PostgreSQL stopped mid-run, then Azurite stopped mid-run. The invocation raises
(so the host retries); after the restart the retried batches complete; nothing is lost,
nothing doubled. Uses its own PostgreSQL and Azurite so it can stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localdev.services import EmbeddedPostgres, LocalServices, NpmAzurite
from tests.helpers import archive_rows, cut, send_batch, synthetic
from txmetrics import runtime, schema
from txmetrics.adapters.blob import BlobArchive, service_client


@pytest.fixture
def own_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServices]:
    svc = LocalServices(EmbeddedPostgres(tmp_path / "pg"), NpmAzurite(location=tmp_path / "azurite"))
    try:
        svc.start()
        schema.apply_all(svc.database_url)
        for k, v in {**svc.env(), "RAW_EVENTS_CONTAINER": "raw-events"}.items():
            monkeypatch.setenv(k, v)
        runtime.reset()
        yield svc
    finally:
        runtime.reset()
        svc.stop()


def test_outage_of_postgres_then_of_azurite(own_services: LocalServices) -> None:
    from localdev.run import load_function

    fn: Callable[[list[Any]], None] = load_function()
    data = synthetic(n=900, partitions=1, seed=9)
    (partition, events), = data.items()
    batches = cut(events, 150)

    def send(batch: list[Any]) -> None:
        send_batch(fn, partition, batch)

    send(batches[0])
    send(batches[1])

    pg = own_services.postgres
    assert isinstance(pg, EmbeddedPostgres)
    pg.stop()
    with pytest.raises(psycopg.OperationalError):
        send(batches[2])
    with pytest.raises(psycopg.OperationalError):   # the host retries while it is down
        send(batches[2])
    pg.start()
    send(batches[2])                                  # the retry completes
    send(batches[3])

    az = own_services.storage
    assert isinstance(az, NpmAzurite)
    az.stop()
    with pytest.raises(Exception) as err:             # azure-core raises ServiceRequestError
        send(batches[4])
    assert "psycopg" not in type(err.value).__module__
    az.start()                                        # same port, same on-disk data
    send(batches[4])                                  # retry: finishes the upload from the outbox
    send(batches[5])

    valid = [e for e in events if e.bad_kind is None]
    with psycopg.connect(own_services.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ingested_events").fetchone() == (len(valid),)
        assert conn.execute("SELECT count(*) FROM failed_items").fetchone() == (len(events) - len(valid),)
        assert conn.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM raw_files WHERE state <> 'uploaded'").fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT event_id) = count(*) FROM dynamic_metrics "
                            "WHERE metric_name = 'approved'").fetchone() == (True,)
        assert conn.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                            "AND dimensions = '{}'").fetchone()[0] == len(valid)
    archive = BlobArchive(service_client(own_services.storage_connection_string), "raw-events")
    rows = archive_rows(archive)
    assert sorted((r[0], r[1]) for r in rows) == sorted((e.partition_id, e.sequence_number) for e in valid)

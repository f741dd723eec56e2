"""The registry of the pipeline's PostgreSQL tables: which exist, which are split into UTC
day partitions, and what retention compares. The one place to add a table (its DDL is a
migration); retention, the lifecycle plan, the benchmark and the tests read it from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    # the column retention compares to its cutoff (a day-partitioned table: its partition key)
    time_column: str | None = None
    day_partitioned: bool = False
    # the key of lifecycle/*.yaml `tables:` that sets its retention in days (None: not expired
    # on its own, e.g. kept small by the fold or by its parent rows)
    retention_key: str | None = None
    # rows past retention that must stay anyway (SQL condition on the rows to delete)
    delete_only_where: str = ""


TABLES: tuple[Table, ...] = (
    # day partitions are created and locked in this order (dynamic_metrics first): one order
    # for every creator, so two of them never deadlock (migration 0007)
    Table("dynamic_metrics", "occurred_at", day_partitioned=True, retention_key="dynamic_metrics"),
    Table("ingested_events", "occurred_at", day_partitioned=True, retention_key="ingested_events"),
    Table("event_dimensions"),
    Table("aggregate_histograms", "window_start", retention_key="aggregate_histograms"),
    Table("aggregate_deltas"),
    Table("aggregate_rollups"),
    # an event refused as past_retention was valid and is in no other store (not archived):
    # kept until an operator closes it, like the archive keeps events
    Table("failed_items", "received_at", retention_key="failed_items",
          delete_only_where="(error_code <> 'past_retention' OR resolved OR replayed)"),
    # manifest rows of files the blob lifecycle rule deleted; a pending file is never dropped
    Table("raw_files", "created_at", retention_key="raw_files", delete_only_where="state <> 'pending'"),
    Table("raw_file_outbox"),
    Table("raw_compactions"),
    # the first day each day-partitioned table keeps (retention moves it forward; ingest
    # refuses events of older days: their ledger partition, and so their deduplication, is gone)
    Table("retention_horizons"),
)

# the ledger: one row per event ingested, the deduplication (its retention bounds what can be
# told from a redelivery)
LEDGER = "ingested_events"
DAY_PARTITIONED = tuple(t.name for t in TABLES if t.day_partitioned)
ROW_RETENTION = tuple(t for t in TABLES if t.retention_key and not t.day_partitioned)
# the tables whose retention the lifecycle files set directly (raw_files follows the blob rule)
RETAINED = tuple(t.retention_key for t in TABLES if t.retention_key and t.name != "raw_files")
# the longest retention anything may give (100 years), in a policy file or TXMETRICS_RETENTION: a
# cutoff `today - days` must be a date (a "keep for ever" of 999999 days stopped the daily
# retention job with OverflowError)
MAX_RETENTION_DAYS = 36_500


def table(name: str) -> Table:
    return next(t for t in TABLES if t.name == name)

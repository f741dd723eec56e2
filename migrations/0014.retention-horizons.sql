-- depends: 0013.exact-sums
-- The first day each day-partitioned table still keeps after retention dropped its older
-- partitions (docs/decisions.md, "Events older than the ledger's retention"). Ingest reads
-- the ledger's: an event of an older day cannot be told from a redelivery any more (its
-- ledger partition is gone), so it is refused (past_retention) instead of being counted
-- again. Retention records a day before it drops the partitions before it; a rebuild that
-- restores the ledger from a later day records that day. A day only moves forward.
CREATE TABLE IF NOT EXISTS retention_horizons (
    table_name  text        PRIMARY KEY,
    kept_since  date        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

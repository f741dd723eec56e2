-- depends: 0015.ledger-one-event-id-a-day
-- The ledger's key becomes one event_id a UTC day (see 0015's header): every existing day
-- partition gets its own unique index on event_key, then the parent's primary key on
-- (event_key, occurred_at) goes.
-- The ledger's writers (ROW EXCLUSIVE) and day creators (SHARE UPDATE EXCLUSIVE) wait from
-- here to the commit: taken on the parent first, as every writer takes it before a day
-- partition, so the index builds below cannot deadlock with a batch that writes two days.
-- Batches wait while the existing days are indexed (minutes for billions of rows: docs/ingest.md,
-- "Upgrading"); the host retries one that times out.
LOCK TABLE ingested_events IN SHARE MODE;

-- (PERFORM in a DO block, not a SELECT: yoyo prints a SELECT's rows, into `make up`'s exports)
DO $$
BEGIN
    PERFORM txm_ledger_day_key(inhrelid::regclass) FROM pg_inherits WHERE inhparent = 'ingested_events'::regclass;
END
$$;

ALTER TABLE ingested_events DROP CONSTRAINT IF EXISTS ingested_events_pkey;

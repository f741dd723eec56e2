-- depends: 0010.truncate-aggregates-with-deltas
-- A leaner ledger (issue 13, docs/ingest.md "The ledger"): ingested_events keeps one row of
-- (event_key, occurred_at, dimension_key) per accepted event, 56 bytes of tuple instead of 72,
-- and a primary key of 16-byte keys instead of the ids' text.
--   * event_key is the first 128 bits of SHA-256 of the event_id's UTF-8 bytes, computed by
--     the writer (txmetrics.core.naming.event_key) and, for SQL, by txm_event_key() below:
--     the same bytes. Among n events, two different ids share a key with a probability of
--     about n^2 / 2^129 (10^-11 for 10^14 events, three years at a million a second), and
--     then only matter if they also share occurred_at; no way is known to make 128 bits of
--     two SHA-256 digests agree on purpose. A shared key would make the second event look
--     like a redelivery. The event_id itself stays in dynamic_metrics, the Parquet archive
--     and failed_items, so nothing that was stored is lost.
--   * raw_file_id goes: which files hold an event is answered from the manifest's time
--     ranges (raw_files.occurred_min/max, indexed), as `txmetrics query --event-id` does.
-- Existing rows get their key by one rewrite of each ledger partition (ALTER COLUMN .. TYPE ..
-- USING: no second version of every row, as an UPDATE would leave behind, and the partitions
-- shrink at once), under an ACCESS EXCLUSIVE lock on the ledger: stop ingest while it runs
-- (docs/ingest.md, "The ledger").
-- Statements are idempotent (yoyo records a migration in a second transaction).

CREATE OR REPLACE FUNCTION txm_event_key(event_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(substring(sha256(convert_to(event_id, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid
$$;

DROP VIEW IF EXISTS dynamic_metrics_wide;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'ingested_events'
                  AND column_name = 'event_id') THEN
        ALTER TABLE ingested_events DROP CONSTRAINT IF EXISTS ingested_events_event_id_check;
        ALTER TABLE ingested_events DROP COLUMN IF EXISTS raw_file_id;
        -- one rewrite of each partition: every id becomes its key in place (the primary key
        -- is rebuilt on it), and the dropped column is stored as null from now on
        ALTER TABLE ingested_events ALTER COLUMN event_id TYPE uuid USING txm_event_key(event_id);
        ALTER TABLE ingested_events RENAME COLUMN event_id TO event_key;
    END IF;
END
$$;
ALTER TABLE ingested_events DROP COLUMN IF EXISTS raw_file_id;
ALTER TABLE ingested_events ALTER COLUMN event_key SET NOT NULL;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'ingested_events'::regclass AND contype = 'p') THEN
        ALTER TABLE ingested_events ADD CONSTRAINT ingested_events_pkey PRIMARY KEY (event_key, occurred_at);
    END IF;
END
$$;

-- Today's wide rows for analysts, as before (each metric row with its event's dimensions),
-- and the ledger's key last: one event's rows are found through the ledger's primary key with
-- WHERE event_key = txm_event_key('...') AND event_id = '...' (a filter on event_id alone
-- reads every metric row of the range: dynamic_metrics has no index on it).
CREATE OR REPLACE VIEW dynamic_metrics_wide AS
SELECT m.event_id, m.metric_name, m.value, m.occurred_at, d.merchant_id, d.payment_method, d.status, d.currency,
       d.country, d.event_type, d.dimensions, l.event_key
  FROM dynamic_metrics m
  JOIN ingested_events l ON l.event_key = txm_event_key(m.event_id) AND l.occurred_at = m.occurred_at
  LEFT JOIN event_dimensions d ON d.dimension_key = l.dimension_key;

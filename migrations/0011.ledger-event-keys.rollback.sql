-- The ledger with event ids and raw file ids again, as far as they can come back: a key is
-- one-way. Each event's id comes back from its metric rows (dynamic_metrics keeps it); an
-- event with none of them left gets the placeholder 'event_key:<key>', so a redelivery of
-- that event after the rollback counts as new. raw_file_id names a live file of the event's
-- day whose time range covers it, which may be another partition's (0 when the manifest has
-- none), so the old `query --event-id` may open the wrong file.
DROP VIEW IF EXISTS dynamic_metrics_wide;

ALTER TABLE ingested_events ADD COLUMN IF NOT EXISTS event_id text;
ALTER TABLE ingested_events ADD COLUMN IF NOT EXISTS raw_file_id bigint;
UPDATE ingested_events l SET event_id = m.event_id
  FROM dynamic_metrics m
 WHERE l.event_id IS NULL AND m.occurred_at = l.occurred_at AND txm_event_key(m.event_id) = l.event_key;
UPDATE ingested_events SET event_id = 'event_key:' || event_key::text WHERE event_id IS NULL;
UPDATE ingested_events l SET raw_file_id = coalesce(
       (SELECT min(f.id) FROM raw_files f
         WHERE f.state <> 'superseded' AND f.event_date = (l.occurred_at AT TIME ZONE 'UTC')::date
           AND l.occurred_at BETWEEN f.occurred_min AND f.occurred_max), 0)
 WHERE raw_file_id IS NULL;
ALTER TABLE ingested_events DROP CONSTRAINT IF EXISTS ingested_events_pkey;
ALTER TABLE ingested_events DROP COLUMN IF EXISTS event_key;
ALTER TABLE ingested_events ALTER COLUMN event_id SET NOT NULL;
ALTER TABLE ingested_events ALTER COLUMN raw_file_id SET NOT NULL;
ALTER TABLE ingested_events ADD CONSTRAINT ingested_events_event_id_check CHECK (length(event_id) BETWEEN 1 AND 128);
ALTER TABLE ingested_events ADD CONSTRAINT ingested_events_pkey PRIMARY KEY (event_id, occurred_at);

CREATE OR REPLACE VIEW dynamic_metrics_wide AS
SELECT m.event_id, m.metric_name, m.value, m.occurred_at, d.merchant_id, d.payment_method, d.status, d.currency,
       d.country, d.event_type, d.dimensions
  FROM dynamic_metrics m
  JOIN ingested_events l ON l.event_id = m.event_id AND l.occurred_at = m.occurred_at
  LEFT JOIN event_dimensions d ON d.dimension_key = l.dimension_key;

DROP FUNCTION IF EXISTS txm_event_key(text);

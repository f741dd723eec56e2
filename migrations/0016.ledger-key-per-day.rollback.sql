-- The ledger's primary key (event_key, occurred_at) again, which every day satisfies (one
-- event_id a day is the stricter rule), and no per-day index beside it.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'ingested_events'::regclass LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', part::text || '_event_key');
        EXECUTE format('DROP INDEX IF EXISTS %I', part::text || '_event_key_time');
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'ingested_events'::regclass AND contype = 'p') THEN
        ALTER TABLE ingested_events ADD CONSTRAINT ingested_events_pkey PRIMARY KEY (event_key, occurred_at);
    END IF;
END
$$;

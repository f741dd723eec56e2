-- The ledger's primary key (event_key, occurred_at) again, which every day satisfies (one
-- event_id a day is the stricter rule), and no per-day index beside it.
-- the parent first, as writers take it: dropping a day's index first would take that day
-- before the parent and could deadlock with a batch (a review)
LOCK TABLE ingested_events IN ACCESS EXCLUSIVE MODE;

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

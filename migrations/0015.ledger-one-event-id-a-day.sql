-- depends: 0014.retention-horizons
-- The ledger takes an event_id once per UTC day of its occurred_at (docs/decisions.md,
-- "Same event, different occurred_at"). Until now its key was (event_key, occurred_at): the
-- same event_id sent again with another occurred_at (a producer that stamps the time again
-- when it resends, or corrects it) was a new event and added rows everywhere, against the
-- contract's "an event_id delivered again never adds a row". A unique index of the parent
-- cannot say "once a day": PostgreSQL requires every partition key column in it, with no
-- expressions. Each day partition can: it holds one UTC day, so a unique index on event_key
-- alone in each partition is exactly one event_id a day, race-free (a second writer waits for
-- the first's commit, as before), and 8 bytes an entry smaller than (event_key, occurred_at).
--   * New day partitions get it from txm_ensure_day_partitions (below), on the standalone
--     table before it is attached (no lock on the ledger for it).
--   * Existing day partitions get it here. A day that already holds an event_id twice (stored
--     under the old key) cannot: it keeps a unique index on (event_key, occurred_at), the old
--     rule, for that day only. Each index is built under a SHARE lock on its partition, so
--     batches writing to the ledger wait until the migration commits (the host retries them).
--   * Then the parent's primary key goes; ON CONFLICT DO NOTHING and COPY's unique check use
--     the partition's own unique index (no conflict target is named anywhere).
-- Statements are idempotent (yoyo records a migration in a second transaction).

CREATE OR REPLACE FUNCTION txm_ensure_day_partitions(parent regclass, first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    d date;
    part text;
    created integer := 0;
BEGIN
    IF last_day < first_day THEN
        RETURN 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM generate_series(first_day, last_day, interval '1 day') AS g(day)
                    WHERE to_regclass(format('%s_p%s', parent::text, to_char(g.day, 'YYYYMMDD'))) IS NULL) THEN
        RETURN 0;
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', parent);
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := format('%s_p%s', parent::text, to_char(d, 'YYYYMMDD'));
        -- checked again under the lock: another creator may have just made it
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING ALL)', part, parent);
            IF parent = 'ingested_events'::regclass THEN
                -- the ledger's key: one event_id a UTC day (this migration's header)
                EXECUTE format('CREATE UNIQUE INDEX %I ON %I (event_key)', part || '_event_key', part);
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'ingested_events'::regclass LOOP
        IF to_regclass(part::text || '_event_key') IS NULL AND to_regclass(part::text || '_event_key_time') IS NULL THEN
            BEGIN
                EXECUTE format('CREATE UNIQUE INDEX %I ON %s (event_key)', part::text || '_event_key', part);
            EXCEPTION WHEN unique_violation THEN
                -- an event_id stored twice on this day under the old key: the old rule, this day only
                EXECUTE format('CREATE UNIQUE INDEX %I ON %s (event_key, occurred_at)', part::text || '_event_key_time',
                               part);
            END;
        END IF;
    END LOOP;
END
$$;

ALTER TABLE ingested_events DROP CONSTRAINT IF EXISTS ingested_events_pkey;

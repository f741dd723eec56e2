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
-- Two migrations, so that no day partition is ever made without a key:
--   * 0015 (this one) replaces txm_ensure_day_partitions, and commits before 0016 starts: new
--     ledger days get the key on the standalone table before it is attached (while the parent
--     still has its primary key, they also get that one, which 0016 drops). It also gives a
--     ledger day in its range that has no unique index one (txm_ledger_day_key) before it
--     does anything else: a call that began in the old body and was held until after 0016
--     would otherwise have made a day without any key (found by a review).
--   * 0016 takes the ledger's lock once, builds the key of every existing day and drops the
--     parent's primary key. ON CONFLICT DO NOTHING and COPY's unique check then use each
--     partition's own unique index (no conflict target is named anywhere).
-- Statements are idempotent (yoyo records a migration in a second transaction).

-- The key of one ledger day partition: a unique index on event_key alone; a day that already
-- holds an event_id twice (stored under the old key) keeps (event_key, occurred_at), that day only.
-- Not SECURITY DEFINER: it runs as the owner when txm_ensure_day_partitions (which is) calls it,
-- and as the administrator in 0016; nobody else needs to make indexes.
CREATE OR REPLACE FUNCTION txm_ledger_day_key(part regclass)
RETURNS void LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    IF to_regclass(part::text || '_event_key') IS NOT NULL OR to_regclass(part::text || '_event_key_time') IS NOT NULL THEN
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('CREATE UNIQUE INDEX %I ON %s (event_key)', part::text || '_event_key', part);
    EXCEPTION WHEN unique_violation THEN
        BEGIN
            EXECUTE format('CREATE UNIQUE INDEX %I ON %s (event_key, occurred_at)', part::text || '_event_key_time',
                           part);
        EXCEPTION WHEN unique_violation THEN
            -- a day made without any key that has already stored a row twice: no key fits it. Failing
            -- here would stop every later creation of days for good; the day stays as it is, said.
            RAISE WARNING 'ledger day % holds a row twice and can take no unique index: its events may be counted '
                          'more than once; see docs/ingest.md, "Upgrading"', part;
        END;
    END;
END
$$;

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
    IF parent = 'ingested_events'::regclass AND EXISTS (
            SELECT 1 FROM generate_series(first_day, last_day, interval '1 day') AS g(day)
              JOIN pg_class p ON p.oid = to_regclass(format('%s_p%s', parent::text, to_char(g.day, 'YYYYMMDD')))
             WHERE NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = p.oid AND i.indisunique)) THEN
        -- a ledger day without a unique index of its own (made by this function's body before
        -- 0015 after 0016 dropped the parent's key, or by hand) takes one before anything else,
        -- under the creators' lock: two repairs at once would otherwise build two indexes
        EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', parent);
        PERFORM txm_ledger_day_key(p.oid::regclass)
           FROM generate_series(first_day, last_day, interval '1 day') AS g(day)
           JOIN pg_class p ON p.oid = to_regclass(format('%s_p%s', parent::text, to_char(g.day, 'YYYYMMDD')))
          WHERE NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = p.oid AND i.indisunique);
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
                PERFORM txm_ledger_day_key(part::regclass);      -- the ledger's key (this migration's header)
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

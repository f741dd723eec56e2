-- depends: 0006.sparse-histogram-input
-- Day partitions without deadlocks. `CREATE TABLE .. PARTITION OF` takes ACCESS EXCLUSIVE on
-- the parent: it waits for every in-flight batch on that table while holding what it already
-- created on the other one, and batches wait behind it: with several partitions reaching a
-- new UTC day at once (every midnight, or a backfill), that deadlocked. Now each partition
-- is created standalone (LIKE the parent: columns, constraints, indexes) and then attached:
-- ATTACH PARTITION needs only SHARE UPDATE EXCLUSIVE on the parent, which writers' ROW
-- EXCLUSIVE does not conflict with, and which conflicts with itself, so creators of one
-- table take turns (callers lock tables in one fixed order). Nothing to do: no lock at all.
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
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

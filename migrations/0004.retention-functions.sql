-- depends: 0003.app-role-support
-- Retention for day-partitioned tables: drop every partition whose whole range ends on or
-- before the cutoff (midnight UTC), so no partition that can hold a row at or after the
-- cutoff is ever dropped. Runs as the table owner (the app role has data privileges only)
-- and waits at most 5 s for the parent's lock, so ingestion is never stalled for long:
-- a run that cannot get the lock fails and the next daily run retries.
CREATE OR REPLACE FUNCTION txm_drop_expired_partitions(parent regclass, cutoff date)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.oid::regclass::text AS name,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent
         ORDER BY 2
    LOOP
        IF part.upper_bound IS NOT NULL AND part.upper_bound <= (cutoff::timestamp AT TIME ZONE 'UTC') THEN
            EXECUTE format('DROP TABLE %s', part.name);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
END
$$;

-- depends: 0003.app-role-support
-- Retention for day-partitioned tables: a partition is expired when its whole range ends on
-- or before the cutoff (midnight UTC), so no partition that can hold a row at or after the
-- cutoff is ever dropped. txm_expired_partitions lists them (the lifecycle plan uses it);
-- txm_drop_expired_partitions drops them, as the table owner (the app role has data
-- privileges only), waiting at most 5 s for the parent's lock so ingestion is never stalled
-- for long: a run that cannot get the lock fails and the next daily run retries.
CREATE OR REPLACE FUNCTION txm_expired_partitions(parent regclass, cutoff date)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT name FROM (
        SELECT c.oid::regclass::text AS name,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent) AS p
     WHERE upper_bound <= (cutoff::timestamp AT TIME ZONE 'UTC')
     ORDER BY upper_bound
$$;

CREATE OR REPLACE FUNCTION txm_drop_expired_partitions(parent regclass, cutoff date)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT txm_expired_partitions(parent, cutoff) LOOP
        EXECUTE format('DROP TABLE %s', part);
        RETURN NEXT part;
    END LOOP;
END
$$;

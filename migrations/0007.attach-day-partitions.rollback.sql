-- Back to 0001's CREATE TABLE .. PARTITION OF (with 0003's SECURITY DEFINER).
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
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := format('%s_p%s', parent::text, to_char(d, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                               part, parent, d::timestamp AT TIME ZONE 'UTC',
                               (d + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- depends: 0002.histogram-functions-and-kpi-view
-- The function connects as its own role with data privileges only (see infra/providers.py).
-- Creating day partitions needs the parent table's owner: run that function as its owner.
ALTER FUNCTION txm_ensure_day_partitions(regclass, date, date) SECURITY DEFINER;
ALTER FUNCTION txm_ensure_day_partitions(regclass, date, date) SET search_path = public, pg_temp;

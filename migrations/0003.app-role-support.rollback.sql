ALTER FUNCTION txm_ensure_day_partitions(regclass, date, date) SECURITY INVOKER;
ALTER FUNCTION txm_ensure_day_partitions(regclass, date, date) RESET search_path;

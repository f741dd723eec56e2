DROP FUNCTION IF EXISTS txm_drop_expired_partitions(regclass, date);

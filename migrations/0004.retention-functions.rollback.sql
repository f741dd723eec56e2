DROP FUNCTION IF EXISTS txm_drop_expired_partitions(regclass, date);
DROP FUNCTION IF EXISTS txm_expired_partitions(regclass, date);

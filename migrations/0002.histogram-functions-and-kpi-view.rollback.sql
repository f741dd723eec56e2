DROP VIEW IF EXISTS payment_metrics_5m;
DROP FUNCTION IF EXISTS txm_hist_quantile(double precision, integer, bigint, integer, bigint[], integer, bigint[], double precision, double precision);
DROP FUNCTION IF EXISTS txm_hist_merge_offset(integer, integer);
DROP FUNCTION IF EXISTS txm_hist_merge_counts(integer, bigint[], integer, bigint[]);

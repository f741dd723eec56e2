DROP FUNCTION IF EXISTS txm_hist_dense(integer[], bigint[]);

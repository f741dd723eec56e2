DROP TRIGGER IF EXISTS txm_truncate_with_deltas ON aggregate_histograms;
DROP FUNCTION IF EXISTS txm_truncate_aggregate_deltas();

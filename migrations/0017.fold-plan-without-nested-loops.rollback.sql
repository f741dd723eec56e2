ALTER FUNCTION txm_fold_aggregates() RESET enable_nestloop;

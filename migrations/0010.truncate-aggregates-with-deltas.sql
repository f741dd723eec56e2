-- depends: 0009.raw-file-metrics
-- Pending deltas are part of what aggregate_histograms holds, not yet folded: emptying the
-- aggregates (TRUNCATE aggregate_histograms, as a reset or a test harness does) empties the
-- pending deltas too, or a later fold (and every reader meanwhile) would bring back counts
-- of events the reset meant to forget.
CREATE OR REPLACE FUNCTION txm_truncate_aggregate_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM aggregate_deltas;   -- not TRUNCATE: the same statement may truncate it too
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS txm_truncate_with_deltas ON aggregate_histograms;
CREATE TRIGGER txm_truncate_with_deltas BEFORE TRUNCATE ON aggregate_histograms
    FOR EACH STATEMENT EXECUTE FUNCTION txm_truncate_aggregate_deltas();

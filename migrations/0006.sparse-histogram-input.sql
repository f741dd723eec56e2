-- depends: 0005.compaction-and-replay
-- Writers send each batch's histograms sparse (non-empty bucket keys and their counts):
-- a per-merchant slice holds a few values spread over hundreds of buckets, so its dense
-- form is mostly zeros (measured: 8x fewer numbers to format, send and parse per batch).
-- This turns the sparse form into the stored dense one (counts from the first key).
CREATE OR REPLACE FUNCTION txm_hist_dense(keys integer[], counts bigint[])
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    dense bigint[];
    first integer := keys[1];
    i integer;
BEGIN
    IF cardinality(keys) <> cardinality(counts) THEN
        RAISE EXCEPTION 'txm_hist_dense: % keys but % counts', cardinality(keys), cardinality(counts);
    END IF;
    IF cardinality(keys) = 0 THEN
        RETURN NULL;
    END IF;
    IF cardinality(keys) = 1 THEN
        RETURN counts;
    END IF;
    dense := array_fill(0::bigint, ARRAY[keys[cardinality(keys)] - first + 1]);
    FOR i IN 1..cardinality(keys) LOOP
        dense[keys[i] - first + 1] := counts[i];
    END LOOP;
    RETURN dense;
END
$$;

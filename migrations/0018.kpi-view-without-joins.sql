-- depends: 0017.fold-plan-without-nested-loops
-- payment_metrics_5m without joins (docs/decisions.md, "The KPI view's plan"). The view joined
-- its approved rows to its processing_ms rows and to its amounts per window, merchant and method.
-- Their filters on jsonb key sets are estimated at a few rows whatever the statistics, so the
-- planner merged the sides on window_start alone and compared every (merchant, method) of a
-- window with every other one: SELECT * FROM payment_metrics_5m WHERE window_start >= an hour
-- ago took 1.9 s at 100 merchants x 4 methods, 6.1 s at 200, 20.4 s at 400 (quadratic: about
-- 20 minutes at 2,000 merchants), with fresh statistics. And a range asked for reached only
-- the approved side: the other two read and grouped every day the table keeps, per query.
-- Now one pass: the three metrics' rows of the slice, grouped by (window, merchant, method),
-- each metric's figures picked by FILTER (one row per metric and key: the dimensions hold
-- exactly those names, and aggregate_histograms_current one row per key). No join is left to
-- plan wrongly, and a filter on window_start reaches every row read (a grouping column).
-- Same columns, same types, same rows: one per window and (merchant, method) with approved rows.
CREATE OR REPLACE VIEW payment_metrics_5m AS
WITH slice AS NOT MATERIALIZED (
    SELECT window_start, dimensions ->> 'merchant_id' AS merchant_id,
           dimensions ->> 'payment_method' AS payment_method, dimensions ->> 'currency' AS currency, metric_name,
           count, sum, min, max, scale, zero_count, pos_offset, pos_counts, neg_offset, neg_counts
      FROM aggregate_histograms_current
     WHERE window_seconds = 300
       AND ((metric_name IN ('approved', 'processing_ms')
             AND dimensions ?& ARRAY['merchant_id', 'payment_method']
             AND dimensions - 'merchant_id' - 'payment_method' = '{}'::jsonb)
         OR (metric_name = 'amount'
             AND dimensions ?& ARRAY['merchant_id', 'payment_method', 'currency']
             AND dimensions - 'merchant_id' - 'payment_method' - 'currency' = '{}'::jsonb))
), keyed AS NOT MATERIALIZED (
    SELECT window_start, merchant_id, payment_method,
           max(count) FILTER (WHERE metric_name = 'approved') AS a_count,
           max(sum) FILTER (WHERE metric_name = 'approved') AS a_sum,
           count(*) FILTER (WHERE metric_name = 'approved') AS a_rows,
           jsonb_object_agg(currency, sum) FILTER (WHERE metric_name = 'amount') AS by_currency,
           count(*) FILTER (WHERE metric_name = 'amount') AS currencies,
           min(currency) FILTER (WHERE metric_name = 'amount') AS any_currency,
           sum(sum) FILTER (WHERE metric_name = 'amount') AS total,
           max(count) FILTER (WHERE metric_name = 'processing_ms') AS p_count,
           max(scale) FILTER (WHERE metric_name = 'processing_ms') AS p_scale,
           max(zero_count) FILTER (WHERE metric_name = 'processing_ms') AS p_zero_count,
           max(pos_offset) FILTER (WHERE metric_name = 'processing_ms') AS p_pos_offset,
           max(pos_counts) FILTER (WHERE metric_name = 'processing_ms') AS p_pos_counts,
           max(neg_offset) FILTER (WHERE metric_name = 'processing_ms') AS p_neg_offset,
           max(neg_counts) FILTER (WHERE metric_name = 'processing_ms') AS p_neg_counts,
           max(min) FILTER (WHERE metric_name = 'processing_ms') AS p_min,
           max(max) FILTER (WHERE metric_name = 'processing_ms') AS p_max
      FROM slice
     GROUP BY window_start, merchant_id, payment_method
)
SELECT window_start,
       window_start + interval '5 minutes' AS window_end,
       merchant_id,
       payment_method,
       a_count AS transaction_count,
       a_sum::bigint AS approved_count,
       (a_sum / a_count)::double precision AS approval_rate,
       CASE WHEN currencies = 1 THEN any_currency END AS currency,
       CASE WHEN currencies = 1 THEN total END AS amount_sum,
       by_currency AS amount_sum_by_currency,
       p_count AS processing_ms_count,
       txm_hist_quantile(0.50, p_scale, p_zero_count, p_pos_offset, p_pos_counts, p_neg_offset, p_neg_counts, p_min, p_max) AS processing_ms_p50,
       txm_hist_quantile(0.95, p_scale, p_zero_count, p_pos_offset, p_pos_counts, p_neg_offset, p_neg_counts, p_min, p_max) AS processing_ms_p95,
       txm_hist_quantile(0.99, p_scale, p_zero_count, p_pos_offset, p_pos_counts, p_neg_offset, p_neg_counts, p_min, p_max) AS processing_ms_p99
  FROM keyed
 WHERE a_rows > 0;

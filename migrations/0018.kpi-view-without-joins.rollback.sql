-- payment_metrics_5m as migration 0008 made it (with its joins).
CREATE OR REPLACE VIEW payment_metrics_5m AS
WITH current AS NOT MATERIALIZED (
    SELECT * FROM aggregate_histograms_current WHERE window_seconds = 300
), slice AS NOT MATERIALIZED (
    SELECT window_start, dimensions ->> 'merchant_id' AS merchant_id,
           dimensions ->> 'payment_method' AS payment_method, metric_name,
           count, sum, min, max, scale, zero_count, pos_offset, pos_counts, neg_offset, neg_counts
      FROM current
     WHERE metric_name IN ('approved', 'processing_ms')
       AND dimensions ?& ARRAY['merchant_id', 'payment_method']
       AND dimensions - 'merchant_id' - 'payment_method' = '{}'::jsonb
), amounts AS NOT MATERIALIZED (
    SELECT window_start, dimensions ->> 'merchant_id' AS merchant_id,
           dimensions ->> 'payment_method' AS payment_method,
           jsonb_object_agg(dimensions ->> 'currency', sum) AS by_currency,
           count(*) AS currencies, min(dimensions ->> 'currency') AS any_currency, sum(sum) AS total
      FROM current
     WHERE metric_name = 'amount'
       AND dimensions ?& ARRAY['merchant_id', 'payment_method', 'currency']
       AND dimensions - 'merchant_id' - 'payment_method' - 'currency' = '{}'::jsonb
     GROUP BY 1, 2, 3
)
SELECT a.window_start,
       a.window_start + interval '5 minutes' AS window_end,
       a.merchant_id,
       a.payment_method,
       a.count AS transaction_count,
       a.sum::bigint AS approved_count,
       (a.sum / a.count)::double precision AS approval_rate,
       CASE WHEN m.currencies = 1 THEN m.any_currency END AS currency,
       CASE WHEN m.currencies = 1 THEN m.total END AS amount_sum,
       m.by_currency AS amount_sum_by_currency,
       p.count AS processing_ms_count,
       txm_hist_quantile(0.50, p.scale, p.zero_count, p.pos_offset, p.pos_counts, p.neg_offset, p.neg_counts, p.min, p.max) AS processing_ms_p50,
       txm_hist_quantile(0.95, p.scale, p.zero_count, p.pos_offset, p.pos_counts, p.neg_offset, p.neg_counts, p.min, p.max) AS processing_ms_p95,
       txm_hist_quantile(0.99, p.scale, p.zero_count, p.pos_offset, p.pos_counts, p.neg_offset, p.neg_counts, p.min, p.max) AS processing_ms_p99
  FROM slice AS a
  LEFT JOIN slice AS p
         ON p.metric_name = 'processing_ms' AND p.window_start = a.window_start
        AND p.merchant_id = a.merchant_id AND p.payment_method = a.payment_method
  LEFT JOIN amounts AS m
         ON m.window_start = a.window_start AND m.merchant_id = a.merchant_id AND m.payment_method = a.payment_method
 WHERE a.metric_name = 'approved';

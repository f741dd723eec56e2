-- Core tables of the pipeline (contract section 4). Created only by yoyo migrations.
-- Every statement is idempotent: yoyo records a migration in a second transaction, so a
-- crash between the two must not make the re-run fail.

-- Day partitions for the time-partitioned tables, created ahead by txm_ensure_day_partitions()
-- (called by the writer for the days of each batch and by the daily retention job).
CREATE OR REPLACE FUNCTION txm_ensure_day_partitions(parent regclass, first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
    created integer := 0;
BEGIN
    IF last_day < first_day THEN
        RETURN 0;
    END IF;
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := format('%s_p%s', parent::text, to_char(d, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                               part, parent, d::timestamp AT TIME ZONE 'UTC',
                               (d + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR unique_violation THEN
                NULL;  -- created concurrently by another writer
            END;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- One row per (event, metric). Partitioned by UTC day of occurred_at so that retention
-- drops partitions instead of deleting rows.
CREATE TABLE IF NOT EXISTS dynamic_metrics (
    event_id        text             NOT NULL CHECK (length(event_id) BETWEEN 1 AND 128),
    metric_name     text             NOT NULL CHECK (metric_name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value           double precision NOT NULL CHECK (value <> 'NaN' AND value > '-Infinity' AND value < 'Infinity'),
    occurred_at     timestamptz      NOT NULL,
    merchant_id     text             NOT NULL CHECK (merchant_id <> ''),
    payment_method  text             NOT NULL CHECK (payment_method <> ''),
    status          text             NOT NULL CHECK (status IN ('approved', 'declined', 'failed', 'pending')),
    currency        text             NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    country         text             CHECK (country ~ '^[A-Z]{2}$'),
    event_type      text,
    dimensions      jsonb            CHECK (dimensions IS NULL OR jsonb_typeof(dimensions) = 'object'),
    PRIMARY KEY (event_id, metric_name, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- The per-event deduplication ledger: one row per event ever accepted. It is the gate for
-- exactly-once effects (only events whose ledger row is really inserted produce metric rows,
-- aggregates and archive rows) and it tells which raw file holds an event.
-- It holds identifiers only, not the events (those live in Parquet).
CREATE TABLE IF NOT EXISTS ingested_events (
    event_id         text        NOT NULL CHECK (length(event_id) BETWEEN 1 AND 128),
    occurred_at      timestamptz NOT NULL,
    partition_id     text        NOT NULL,
    sequence_number  bigint      NOT NULL,
    raw_file_id      bigint      NOT NULL,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- 5-minute (and coarser) windowed aggregates with a mergeable log-bucket histogram:
-- bucket k of a positive value v is ceil(log2(v) * 2^scale); counts are stored densely
-- from pos_offset (the key of counts[1]); negative values mirror that in neg_*; values with
-- |v| < 1e-9 count in zero_count. Histograms with the same scale merge by adding counts.
CREATE TABLE IF NOT EXISTS aggregate_histograms (
    metric_name     text        NOT NULL,
    window_seconds  integer     NOT NULL CHECK (window_seconds > 0),
    window_start    timestamptz NOT NULL,
    dimensions      jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(dimensions) = 'object'),
    count           bigint      NOT NULL CHECK (count > 0),
    sum             numeric     NOT NULL,
    min             double precision NOT NULL,
    max             double precision NOT NULL,
    zero_count      bigint      NOT NULL DEFAULT 0 CHECK (zero_count >= 0),
    scale           smallint    NOT NULL DEFAULT 6 CHECK (scale BETWEEN 0 AND 10),
    pos_offset      integer,
    pos_counts      bigint[],
    neg_offset      integer,
    neg_counts      bigint[],
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_name, window_seconds, window_start, dimensions),
    CHECK (min <= max),
    CHECK ((pos_offset IS NULL) = (pos_counts IS NULL)),
    CHECK ((neg_offset IS NULL) = (neg_counts IS NULL)),
    CHECK (extract(epoch FROM window_start)::bigint % window_seconds = 0)
) WITH (fillfactor = 70);
-- fillfactor 70: every batch updates its rows in place; the free space lets PostgreSQL
-- keep the new row versions on the same page (HOT updates, no index churn). Queries by
-- metric and time range use the primary key's prefix, so no other index is needed.

-- Events that could not be processed, one row per bad event (item_key dedupes redelivery).
CREATE TABLE IF NOT EXISTS failed_items (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_key         text        NOT NULL UNIQUE,
    partition_id     text        NOT NULL,
    sequence_number  bigint,
    enqueued_at      timestamptz,
    event_id         text,
    error_code       text        NOT NULL CHECK (error_code ~ '^[a-z][a-z0-9_]*$'),
    detail           text        NOT NULL,
    payload          text        NOT NULL,
    payload_truncated boolean    NOT NULL DEFAULT false,
    received_at      timestamptz NOT NULL DEFAULT now(),
    replayed         boolean     NOT NULL DEFAULT false,
    replayed_at      timestamptz,
    resolved         boolean     NOT NULL DEFAULT false,
    CHECK (replayed = (replayed_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS failed_items_code_idx ON failed_items (error_code) WHERE NOT replayed;
CREATE INDEX IF NOT EXISTS failed_items_received_idx ON failed_items (received_at);

-- Manifest of the Parquet files in the raw archive (metadata, not a copy of the events).
-- state: 'pending' = committed here, upload not yet confirmed (content in raw_file_outbox);
--        'uploaded' = in Blob Storage; 'superseded' = merged into another file by compaction.
CREATE TABLE IF NOT EXISTS raw_files (
    id               bigint      PRIMARY KEY,
    path             text        NOT NULL UNIQUE,
    container        text        NOT NULL,
    partition_id     text        NOT NULL,
    event_date       date        NOT NULL,
    seq_min          bigint      NOT NULL,
    seq_max          bigint      NOT NULL,
    occurred_min     timestamptz NOT NULL,
    occurred_max     timestamptz NOT NULL,
    row_count        integer     NOT NULL CHECK (row_count > 0),
    byte_size        bigint      NOT NULL CHECK (byte_size > 0),
    state            text        NOT NULL CHECK (state IN ('pending', 'uploaded', 'superseded')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    uploaded_at      timestamptz,
    CHECK (seq_min <= seq_max),
    CHECK (occurred_min <= occurred_max)
);
CREATE SEQUENCE IF NOT EXISTS raw_files_id_seq;
CREATE INDEX IF NOT EXISTS raw_files_date_idx ON raw_files (event_date, occurred_min, occurred_max);
CREATE INDEX IF NOT EXISTS raw_files_pending_idx ON raw_files (partition_id) WHERE state = 'pending';

-- Transactional outbox: a raw file's bytes are committed here in the same transaction as its
-- metrics, then uploaded, then deleted. A crash between commit and upload is finished by the
-- next invocation on that partition (or the daily maintenance timer, which flushes every
-- partition), so the archive never misses a committed event.
CREATE TABLE IF NOT EXISTS raw_file_outbox (
    raw_file_id  bigint      PRIMARY KEY REFERENCES raw_files (id) ON DELETE CASCADE,
    content      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

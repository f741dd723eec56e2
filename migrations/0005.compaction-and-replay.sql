-- depends: 0004.retention-functions
-- Compaction bookkeeping (an intent log, so a crash at any step can be finished or undone)
-- and replay of failed items (the fixed payload is kept beside the original).
ALTER TABLE raw_files ADD COLUMN IF NOT EXISTS superseded_by text;
ALTER TABLE raw_files ADD COLUMN IF NOT EXISTS generation text;
CREATE INDEX IF NOT EXISTS raw_files_generation_idx ON raw_files (generation) WHERE generation IS NOT NULL;

CREATE TABLE IF NOT EXISTS raw_compactions (
    generation    text        PRIMARY KEY,
    event_date    date        NOT NULL,
    input_ids     bigint[]    NOT NULL CHECK (cardinality(input_ids) > 0),
    output_paths  text[]      NOT NULL,
    state         text        NOT NULL CHECK (state IN ('started', 'committed', 'done', 'aborted')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX IF NOT EXISTS raw_compactions_open_idx ON raw_compactions (event_date) WHERE state IN ('started', 'committed');

ALTER TABLE failed_items ADD COLUMN IF NOT EXISTS fixed_payload text;
ALTER TABLE failed_items ADD COLUMN IF NOT EXISTS resolved_at timestamptz;
ALTER TABLE failed_items ADD COLUMN IF NOT EXISTS replay_note text;

-- Daily rollups of the 5-minute histograms (window_seconds = 86400 rows in aggregate_histograms),
-- built for finished days by the daily maintenance job. A batch that writes into a rolled-up
-- day (a late event) marks that day stale, and KPI queries then read its 5-minute rows
-- until the next rollup: a rollup is never used when it could disagree with its windows.
-- `version` is bumped by every such write; the rollup job marks a day fresh only if the
-- version it started from is still current (see txmetrics/rollup.py).
CREATE TABLE IF NOT EXISTS aggregate_rollups (
    day        date        PRIMARY KEY,
    version    bigint      NOT NULL DEFAULT 0,
    stale      boolean     NOT NULL DEFAULT true,
    rolled_at  timestamptz
);

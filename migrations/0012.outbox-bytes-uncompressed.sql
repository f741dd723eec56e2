-- depends: 0011.ledger-event-keys
-- The outbox holds each batch's Parquet file (zstd already) until its upload is confirmed.
-- Stored EXTENDED (bytea's default), every file went through pglz first: pglz finds a few
-- repeats in the file's first kilobyte, so it compresses all of it, gains almost nothing,
-- and the row is deleted a moment later anyway. Measured (embedded PostgreSQL 18, the
-- benchmark's files of 79 KB, three alternating rounds): 1.08 ms of server CPU per file -> 0.32 ms,
-- about 0.8 us per event, a twelfth of PostgreSQL's cost per event (docs/benchmarks.md, round 7).
-- EXTERNAL: still moved out of line (TOAST), never compressed. Applies to rows written
-- from now on; a catalog change only (no rewrite, instant).
ALTER TABLE raw_file_outbox ALTER COLUMN content SET STORAGE EXTERNAL;

DROP TABLE IF EXISTS raw_file_outbox;
DROP TABLE IF EXISTS raw_files;
DROP SEQUENCE IF EXISTS raw_files_id_seq;
DROP TABLE IF EXISTS failed_items;
DROP TABLE IF EXISTS aggregate_histograms;
DROP TABLE IF EXISTS ingested_events;
DROP TABLE IF EXISTS dynamic_metrics;
DROP FUNCTION IF EXISTS txm_ensure_day_partitions(regclass, date, date);

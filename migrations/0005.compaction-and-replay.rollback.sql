DROP TABLE IF EXISTS aggregate_rollups;
ALTER TABLE failed_items DROP COLUMN IF EXISTS replay_note;
ALTER TABLE failed_items DROP COLUMN IF EXISTS resolved_at;
ALTER TABLE failed_items DROP COLUMN IF EXISTS fixed_payload;
DROP TABLE IF EXISTS raw_compactions;
DROP INDEX IF EXISTS raw_files_generation_idx;
ALTER TABLE raw_files DROP COLUMN IF EXISTS generation;
ALTER TABLE raw_files DROP COLUMN IF EXISTS superseded_by;

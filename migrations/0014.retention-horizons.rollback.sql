DROP TABLE IF EXISTS retention_horizons;

-- When each segment was last evaluated over everyone, so the scheduler knows what is due.
ALTER TABLE segments ADD COLUMN last_run BIGINT;

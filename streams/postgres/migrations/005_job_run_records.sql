-- The run log's record of a decided slot travels with its row (docs/jobs.md, "Run log").
-- The statement that ends a slot (or decides it skipped, missed or partial) also stores the
-- scheduler.job-runs record of that end, as the exact bytes to publish; the runner publishes
-- it and clears it in one transaction, after the broker acknowledged it. A runner that dies
-- in between leaves the record here, and the next runner's sweep publishes it: a slot's
-- record is never lost (at worst published twice, with the same run_id).
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS record bytea;
CREATE INDEX IF NOT EXISTS job_runs_record_pending ON job_runs (finished_at)
    WHERE record IS NOT NULL;

-- The run log's records of a slot travel with its row (docs/jobs.md, "The run log"). The
-- statement that changes a slot (an attempt failed and retried, the slot ended, or decided
-- skipped, missed or partial) also appends the scheduler.job-runs record of that change, as
-- the exact bytes to publish; the runner publishes the row's records in order and clears
-- them in one transaction, after the broker acknowledged them. A runner that dies in between
-- leaves them here, and the next runner's sweep publishes them: no record is lost (at worst
-- published twice, with the same run_id).
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS records bytea[];
CREATE INDEX IF NOT EXISTS job_runs_records_pending ON job_runs (finished_at)
    WHERE records IS NOT NULL;

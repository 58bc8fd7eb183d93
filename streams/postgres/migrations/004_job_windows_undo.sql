-- Run windows and undo for maintenance jobs (docs/jobs.md).
-- Every row an archive run moves carries the run's id (job@scheduled_for), so `jobs undo`
-- can move exactly those rows back.
ALTER TABLE tasks_archive ADD COLUMN IF NOT EXISTS archive_run_id text;
CREATE INDEX IF NOT EXISTS tasks_archive_run ON tasks_archive (archive_run_id, task_id)
    WHERE archive_run_id IS NOT NULL;

-- A run stopped at its window's end is `partial` with where it stopped in `progress`; an
-- undo is a run of its own (trigger `undo`) naming the run it undid in `undoes`.
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS progress jsonb NOT NULL DEFAULT '{}';
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS undoes text;
ALTER TABLE job_runs DROP CONSTRAINT IF EXISTS job_runs_trigger_check;
ALTER TABLE job_runs ADD CONSTRAINT job_runs_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'backfill', 'undo'));
ALTER TABLE job_runs DROP CONSTRAINT IF EXISTS job_runs_status_check;
ALTER TABLE job_runs ADD CONSTRAINT job_runs_status_check
    CHECK (status IN ('queued', 'running', 'partial', 'succeeded', 'failed', 'skipped', 'missed'));
CREATE INDEX IF NOT EXISTS job_runs_partial ON job_runs (job) WHERE status = 'partial';

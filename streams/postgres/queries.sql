-- Every SQL statement cronorch runs, by name. $n parameters only; loaded by streams.postgres.
-- Migrations live in streams/postgres/migrations/NNN_*.sql.

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: schema_migrations_exists
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- name: advisory_lock
SELECT pg_advisory_lock($1);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1);

-- name: try_job_lock
SELECT pg_try_advisory_lock($1);

-- name: try_job_lock_shared
SELECT pg_try_advisory_lock_shared($1);

-- name: wait_job_lock
SELECT pg_advisory_lock($1);

-- name: wait_job_lock_shared
SELECT pg_advisory_lock_shared($1);

-- name: backend_identity
SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();

-- name: claim_slot
INSERT INTO job_runs (job, scheduled_for, kind, trigger, trigger_id, tick_at, status, runner_id,
                      backend_pid, backend_start, error_message, finished_at, undoes, records)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
        CASE WHEN $14::bytea IS NULL THEN NULL ELSE ARRAY[$14::bytea] END)
ON CONFLICT (job, scheduled_for) DO NOTHING
RETURNING job;

-- name: start_attempt
UPDATE job_runs
   SET status = 'running', attempt = $3, started_at = COALESCE(started_at, $4),
       backend_pid = $5, backend_start = $6
 WHERE job = $1 AND scheduled_for = $2 AND runner_id = $7 AND status IN ('queued', 'running')
RETURNING job;

-- name: finish_run
UPDATE job_runs
   SET status = $3, attempt = $4, started_at = COALESCE(started_at, $5), finished_at = $6,
       duration_ms = $7, processed = $8, affected = $9, before = $10, after = $11,
       error_class = $12, error_message = $13, progress = $15,
       records = CASE WHEN $16::bytea IS NULL THEN records ELSE array_append(records, $16) END
 WHERE job = $1 AND scheduled_for = $2 AND runner_id = $14 AND status IN ('queued', 'running')
RETURNING job;

-- name: partial_runs
-- Runs stopped at their window's end (or claimed outside it), oldest first.
SELECT job, scheduled_for, kind, trigger, attempt
  FROM job_runs WHERE status = 'partial' ORDER BY scheduled_for, job;

-- name: reclaim_partial
UPDATE job_runs
   SET status = 'running', runner_id = $3, backend_pid = $4, backend_start = $5,
       finished_at = NULL
 WHERE job = $1 AND scheduled_for = $2 AND status = 'partial'
RETURNING attempt, processed, affected, before, progress;

-- name: job_run
SELECT job, scheduled_for, kind, trigger, attempt, status, processed, affected, progress, undoes
  FROM job_runs WHERE job = $1 AND scheduled_for = $2;

-- name: waiting_exists
SELECT EXISTS (SELECT 1 FROM job_runs WHERE job = $1 AND status = 'queued');

-- name: running_exists
SELECT EXISTS (SELECT 1 FROM job_runs WHERE job = $1 AND status = 'running');

-- name: abandoned_slots
-- The queued or running slots of other runners whose session is gone, locked for the sweep
-- (a slot another runner is sweeping right now is skipped, not waited for).
SELECT r.job, r.scheduled_for, r.kind, r.trigger, r.attempt
  FROM job_runs r
 WHERE r.status IN ('queued', 'running') AND r.runner_id <> $1
   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                    WHERE a.pid = r.backend_pid AND a.backend_start = r.backend_start)
 ORDER BY r.scheduled_for, r.job
   FOR UPDATE OF r SKIP LOCKED;

-- name: abandon_slot
UPDATE job_runs
   SET status = 'failed', finished_at = $3, error_class = 'Abandoned',
       error_message = 'the runner that claimed this slot went away before finishing it',
       records = array_append(records, $4::bytea)
 WHERE job = $1 AND scheduled_for = $2;

-- name: stage_record
-- An attempt that failed and is retried: its record, appended while the slot is still ours.
UPDATE job_runs SET records = array_append(records, $3::bytea)
 WHERE job = $1 AND scheduled_for = $2 AND runner_id = $4 AND status IN ('queued', 'running')
RETURNING job;

-- name: pending_records
-- Rows with run-log records not yet published, oldest end first (each row's records in the
-- order they were appended); rows another runner is publishing are skipped. $1/$2 narrow it
-- to one slot (NULL: any).
SELECT job, scheduled_for, records
  FROM job_runs
 WHERE records IS NOT NULL
   AND ($1::text IS NULL OR (job = $1 AND scheduled_for = $2))
 ORDER BY finished_at NULLS FIRST, scheduled_for, job
 LIMIT $3
   FOR UPDATE SKIP LOCKED;

-- name: records_published
UPDATE job_runs SET records = NULL
 WHERE (job, scheduled_for) IN (SELECT * FROM unnest($1::text[], $2::timestamptz[]));

-- name: reclaim_abandoned
UPDATE job_runs
   SET status = 'running', runner_id = $3, backend_pid = $4, backend_start = $5,
       error_class = NULL, error_message = NULL, finished_at = NULL
 WHERE job = $1 AND scheduled_for = $2 AND status = 'failed' AND error_class = 'Abandoned'
RETURNING attempt;

-- name: job_state
SELECT paused, reason, resume_from FROM job_state WHERE job = $1;

-- name: job_states
SELECT job, paused, reason, resume_from FROM job_state ORDER BY job;

-- name: pause_job
INSERT INTO job_state (job, paused, reason) VALUES ($1, true, $2)
ON CONFLICT (job) DO UPDATE SET paused = true, reason = EXCLUDED.reason, changed_at = now();

-- name: resume_job
INSERT INTO job_state (job, paused) VALUES ($1, false)
ON CONFLICT (job) DO UPDATE
   SET paused = false, reason = NULL, changed_at = now(),
       resume_from = CASE WHEN $2 THEN NULL ELSE job_state.resume_from END
RETURNING resume_from;

-- name: defer_slot
UPDATE job_state SET resume_from = LEAST(COALESCE(resume_from, $2), $2)
 WHERE job = $1 AND paused;

-- name: clear_resume_from
UPDATE job_state SET resume_from = NULL WHERE job = $1 AND NOT paused;

-- name: job_runs
SELECT job, scheduled_for, kind, trigger, trigger_id, tick_at, attempt, status, started_at,
       finished_at, duration_ms, processed, affected, before, after, error_class, error_message,
       runner_id, progress, undoes
  FROM job_runs WHERE job = $1 ORDER BY scheduled_for;

-- name: last_runs
SELECT DISTINCT ON (job) job, scheduled_for, trigger, status, attempt, finished_at
  FROM job_runs ORDER BY job, scheduled_for DESC;

-- name: archive_counts
SELECT (SELECT count(*) FROM tasks) AS tasks,
       (SELECT count(*) FROM tasks WHERE status = 'completed' AND completed_at < $1) AS eligible,
       (SELECT count(*) FROM tasks_archive) AS tasks_archive;

-- name: archive_batch
WITH picked AS (
    SELECT task_id FROM tasks
     WHERE status = 'completed' AND completed_at < $1
     ORDER BY completed_at, task_id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM tasks t USING picked p WHERE t.task_id = p.task_id
    RETURNING t.*
), archived AS (
    INSERT INTO tasks_archive (task_id, user_id, version, title, status, completed_at, due_at,
                               due_date, reminders, recurrence, series_id, occurrence_key,
                               created_at, updated_at, archived_at, archive_run_id)
    SELECT task_id, user_id, version, title, status, completed_at, due_at, due_date, reminders,
           recurrence, series_id, occurrence_key, created_at, updated_at, $3, $4
      FROM moved
    ON CONFLICT (task_id) DO UPDATE
       SET user_id = EXCLUDED.user_id, version = EXCLUDED.version, title = EXCLUDED.title,
           status = EXCLUDED.status, completed_at = EXCLUDED.completed_at,
           due_at = EXCLUDED.due_at, due_date = EXCLUDED.due_date,
           reminders = EXCLUDED.reminders, recurrence = EXCLUDED.recurrence,
           series_id = EXCLUDED.series_id, occurrence_key = EXCLUDED.occurrence_key,
           created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
           archived_at = EXCLUDED.archived_at, archive_run_id = EXCLUDED.archive_run_id
    RETURNING 1
)
SELECT count(*) FROM archived;

-- name: archive_preview
SELECT count(*) AS rows, min(completed_at) AS oldest, max(completed_at) AS newest
  FROM tasks WHERE status = 'completed' AND completed_at < $1;

-- name: undo_preview
-- Rows a run archived; `blocked`: those whose task id (or occurrence) is back in tasks.
SELECT count(*) AS rows, min(a.completed_at) AS oldest, max(a.completed_at) AS newest,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM tasks t WHERE t.task_id = a.task_id
               OR (a.series_id IS NOT NULL AND t.series_id = a.series_id
                   AND t.occurrence_key = a.occurrence_key))) AS blocked
  FROM tasks_archive a WHERE a.archive_run_id = $1;

-- name: undo_batch
-- One page of a run's archived rows back into tasks, in one statement (one transaction):
-- the next $2 rows of the run after task id $3 (keyset paging on tasks_archive_run, so a
-- page costs its own rows, never all the rows left; blocked rows are passed, not read
-- again). Rows whose task id or occurrence is in tasks again stay archived (blocked). The
-- two NOT EXISTS are separate so each is one index probe (an OR of both made the planner
-- check every remaining row against tasks on each page).
WITH candidates AS (
    SELECT a.task_id, a.series_id, a.occurrence_key FROM tasks_archive a
     WHERE a.archive_run_id = $1 AND a.task_id > $3
     ORDER BY a.task_id
     LIMIT $2
       FOR UPDATE
), picked AS (
    SELECT c.task_id FROM candidates c
     WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = c.task_id)
       AND NOT EXISTS (SELECT 1 FROM tasks t WHERE c.series_id IS NOT NULL
                          AND t.series_id = c.series_id
                          AND t.occurrence_key = c.occurrence_key)
), moved AS (
    DELETE FROM tasks_archive a USING picked p WHERE a.task_id = p.task_id
    RETURNING a.*
), restored AS (
    INSERT INTO tasks (task_id, user_id, version, title, status, completed_at, due_at, due_date,
                       reminders, recurrence, series_id, occurrence_key, created_at, updated_at)
    SELECT task_id, user_id, version, title, status, completed_at, due_at, due_date, reminders,
           recurrence, series_id, occurrence_key, created_at, updated_at
      FROM moved
    RETURNING 1
)
SELECT (SELECT count(*) FROM restored) AS moved, (SELECT count(*) FROM candidates) AS scanned,
       (SELECT max(task_id) FROM candidates) AS last;

-- name: purge_counts
SELECT (SELECT count(*) FROM tasks_archive) AS tasks_archive,
       (SELECT count(*) FROM tasks_archive WHERE archived_at < $1) AS tasks_archive_expired,
       (SELECT count(*) FROM job_runs) AS job_runs,
       (SELECT count(*) FROM job_runs
         WHERE finished_at < $2 AND status NOT IN ('queued', 'running', 'partial'))
           AS job_runs_expired,
       (SELECT count(*) FROM dead_letters) AS dead_letters,
       (SELECT count(*) FROM dead_letters WHERE failed_at < $3) AS dead_letters_expired,
       (SELECT count(*) FROM outbox) AS outbox,
       (SELECT count(*) FROM outbox WHERE published_at < $4) AS outbox_expired;

-- name: purge_preview
SELECT (SELECT count(*) FROM tasks_archive WHERE archived_at < $1) AS tasks_archive_rows,
       (SELECT min(archived_at) FROM tasks_archive WHERE archived_at < $1) AS tasks_archive_oldest,
       (SELECT max(archived_at) FROM tasks_archive WHERE archived_at < $1) AS tasks_archive_newest,
       (SELECT count(*) FROM job_runs
         WHERE finished_at < $2 AND status NOT IN ('queued', 'running', 'partial'))
           AS job_runs_rows,
       (SELECT min(finished_at) FROM job_runs
         WHERE finished_at < $2 AND status NOT IN ('queued', 'running', 'partial'))
           AS job_runs_oldest,
       (SELECT max(finished_at) FROM job_runs
         WHERE finished_at < $2 AND status NOT IN ('queued', 'running', 'partial'))
           AS job_runs_newest,
       (SELECT count(*) FROM dead_letters WHERE failed_at < $3) AS dead_letters_rows,
       (SELECT min(failed_at) FROM dead_letters WHERE failed_at < $3) AS dead_letters_oldest,
       (SELECT max(failed_at) FROM dead_letters WHERE failed_at < $3) AS dead_letters_newest,
       (SELECT count(*) FROM outbox WHERE published_at < $4) AS outbox_rows,
       (SELECT min(published_at) FROM outbox WHERE published_at < $4) AS outbox_oldest,
       (SELECT max(published_at) FROM outbox WHERE published_at < $4) AS outbox_newest;

-- name: purge_tasks_archive
WITH gone AS (
    DELETE FROM tasks_archive
     WHERE task_id IN (SELECT task_id FROM tasks_archive WHERE archived_at < $1 LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: purge_job_runs
WITH gone AS (
    DELETE FROM job_runs
     WHERE (job, scheduled_for) IN (
           SELECT job, scheduled_for FROM job_runs
            WHERE finished_at < $1 AND status NOT IN ('queued', 'running', 'partial')
            LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: purge_dead_letters
WITH gone AS (
    DELETE FROM dead_letters
     WHERE dead_letter_id IN (SELECT dead_letter_id FROM dead_letters
                               WHERE failed_at < $1 LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: purge_outbox
-- Published rows only (published_at IS NULL never compares < $1).
WITH gone AS (
    DELETE FROM outbox
     WHERE outbox_id IN (SELECT outbox_id FROM outbox WHERE published_at < $1 LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- --- spawn sink, outbox relay, bootstrap (streams/processes/spawnsink.py, relay.py, bootstrap.py) ----

-- name: spawn_task
-- One instance of a series; its task.upserted outbox row only when the row is new. A
-- redelivered spawn, or one for an occurrence already spawned or archived, changes nothing.
WITH inserted AS (
    INSERT INTO tasks (task_id, user_id, version, title, status, due_at, due_date, reminders,
                       recurrence, series_id, occurrence_key, created_at, updated_at)
    SELECT $1, $2, 1, $3, 'open', $4, $5, $6::jsonb, NULL, $7, $8, $9, $9
     WHERE NOT EXISTS (SELECT 1 FROM tasks_archive
                        WHERE series_id = $7 AND occurrence_key = $8)
    ON CONFLICT (series_id, occurrence_key) DO NOTHING
    RETURNING user_id
)
INSERT INTO outbox (user_id, event_type, payload)
SELECT user_id, 'task.upserted', $10::jsonb FROM inserted
RETURNING outbox_id;

-- name: outbox_pending_users
-- The users of the oldest unpublished rows: bounded work per poll, oldest first.
SELECT user_id FROM (
    SELECT user_id, outbox_id FROM outbox WHERE published_at IS NULL
     ORDER BY outbox_id LIMIT $1
) oldest
GROUP BY user_id ORDER BY min(outbox_id);

-- name: try_outbox_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: outbox_pending
SELECT outbox_id, user_id, event_type, payload::text AS payload
  FROM outbox WHERE user_id = $1 AND published_at IS NULL
 ORDER BY outbox_id LIMIT $2;

-- name: outbox_mark_published
UPDATE outbox SET published_at = $2 WHERE outbox_id = ANY($1::bigint[]);

-- name: outbox_unpublished_count
SELECT count(*) FROM outbox WHERE published_at IS NULL;

-- name: snapshot_counts
SELECT (SELECT count(*) FROM user_settings) AS user_settings,
       (SELECT count(*) FROM tasks WHERE status = 'open') AS open_tasks;

-- name: snapshot_user_settings
SELECT user_id, version, timezone, digest_time, dst_policy::text AS dst_policy
  FROM user_settings ORDER BY user_id;

-- name: snapshot_open_tasks
SELECT task_id, user_id, version, title, status, completed_at, due_at, due_date,
       reminders::text AS reminders, recurrence::text AS recurrence, series_id
  FROM tasks WHERE status = 'open' ORDER BY user_id, task_id;

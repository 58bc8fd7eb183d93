-- The product's own tables: one row per job slot, per-job control state, dead letters.
CREATE TABLE IF NOT EXISTS job_runs (
    job             text NOT NULL,
    scheduled_for   timestamptz NOT NULL,
    kind            text NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'backfill')),
    trigger_id      text NOT NULL,
    tick_at         timestamptz,
    attempt         integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
                                                    'skipped', 'missed')),
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_ms     bigint CHECK (duration_ms >= 0),
    processed       bigint NOT NULL DEFAULT 0,
    affected        bigint NOT NULL DEFAULT 0,
    before          jsonb NOT NULL DEFAULT '{}',
    after           jsonb NOT NULL DEFAULT '{}',
    error_class     text,
    error_message   text,
    runner_id       text NOT NULL,
    backend_pid     integer,
    backend_start   timestamptz,
    UNIQUE (job, scheduled_for)
);
CREATE INDEX IF NOT EXISTS job_runs_active ON job_runs (job) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS job_runs_finished_at ON job_runs (finished_at);

CREATE TABLE IF NOT EXISTS job_state (
    job          text PRIMARY KEY,
    paused       boolean NOT NULL DEFAULT false,
    reason       text,
    resume_from  timestamptz,
    changed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id  bigserial PRIMARY KEY,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    reason          text NOT NULL,
    value           bytea,
    failed_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_failed_at ON dead_letters (failed_at);

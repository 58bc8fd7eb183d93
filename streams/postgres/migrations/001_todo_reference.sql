-- The Todo tables cronorch touches (a reference schema: the Todo API owns the real ones).
CREATE TABLE IF NOT EXISTS tasks (
    task_id         text PRIMARY KEY,
    user_id         text NOT NULL,
    version         integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    title           text NOT NULL DEFAULT '',
    status          text NOT NULL CHECK (status IN ('open', 'completed')),
    completed_at    timestamptz,
    due_at          timestamptz,
    due_date        date,
    reminders       jsonb NOT NULL DEFAULT '[]',
    recurrence      jsonb,
    series_id       text,
    occurrence_key  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'open' OR completed_at IS NOT NULL),
    UNIQUE (series_id, occurrence_key)
);
CREATE INDEX IF NOT EXISTS tasks_completed_at ON tasks (completed_at, task_id)
    WHERE status = 'completed';
CREATE INDEX IF NOT EXISTS tasks_user ON tasks (user_id);

CREATE TABLE IF NOT EXISTS tasks_archive (
    task_id         text PRIMARY KEY,
    user_id         text NOT NULL,
    version         integer NOT NULL,
    title           text NOT NULL,
    status          text NOT NULL,
    completed_at    timestamptz,
    due_at          timestamptz,
    due_date        date,
    reminders       jsonb NOT NULL,
    recurrence      jsonb,
    series_id       text,
    occurrence_key  text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_archive_archived_at ON tasks_archive (archived_at);

CREATE TABLE IF NOT EXISTS user_settings (
    user_id      text PRIMARY KEY,
    version      integer NOT NULL CHECK (version >= 1),
    timezone     text NOT NULL DEFAULT 'UTC',
    digest_time  text,
    dst_policy   jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS outbox (
    outbox_id     bigserial PRIMARY KEY,
    user_id       text NOT NULL,
    event_type    text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (outbox_id) WHERE published_at IS NULL;

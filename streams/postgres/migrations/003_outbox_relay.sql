-- The outbox relay and the spawn sink (docs/outbox.md).
-- The relay's claim: one user's unpublished rows in order.
CREATE INDEX IF NOT EXISTS outbox_unpublished_user ON outbox (user_id, outbox_id)
    WHERE published_at IS NULL;

-- The sink also refuses an occurrence whose instance was archived since (a late redelivery).
CREATE INDEX IF NOT EXISTS tasks_archive_occurrence ON tasks_archive (series_id, occurrence_key)
    WHERE series_id IS NOT NULL;

-- Bootstrap streams open tasks user by user.
CREATE INDEX IF NOT EXISTS tasks_open_user ON tasks (user_id, task_id) WHERE status = 'open';

-- Wake the relays on every insert: one notification per statement (and PostgreSQL folds
-- identical notifications of one transaction into one), delivered at commit.
CREATE OR REPLACE FUNCTION cronorch_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cronorch_outbox', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION cronorch_outbox_notify();

"""The relay's store on PostgreSQL: unpublished outbox rows per user, LISTEN wake-ups.

Implements ``streams.stores.OutboxStore``. A user's rows are published under that user's
transaction-scoped advisory lock (``pg_try_advisory_xact_lock``), so relays never interleave
one user's rows and never wait for each other; rows are marked published in the same
transaction, only after the broker acknowledged them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from streams.postgres.connector import Connector, Listener, queries
from streams.stores import OutboxRow


def outbox_lock_key(user_id: str) -> int:
    """The advisory lock key of a user's outbox rows (a different namespace from jobs)."""
    digest = hashlib.sha256(f"cronorch.outbox:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgOutboxStore:
    """The relay's ``OutboxStore`` on a ``Connector``."""

    def __init__(self, db: Connector) -> None:
        self.db = db

    async def outbox_pending_users(self, scan: int) -> list[str]:
        return [r["user_id"] for r in await self.db.fetch("outbox_pending_users", scan)]

    async def outbox_unpublished(self) -> int:
        return int(await self.db.fetchval("outbox_unpublished_count"))

    async def publish_outbox(self, user_id: str, limit: int,
                             publish: Callable[[list[OutboxRow]], Awaitable[None]],
                             clock: Callable[[], datetime]) -> int | None:
        """Publish a user's oldest unpublished rows with ``publish`` and mark them published.

        Holds the user's advisory lock for the transaction, so relays never interleave one
        user's rows; None if another relay holds it. Rows are marked only after ``publish``
        returned (the broker acknowledged them); if it raises, nothing is marked.
        """
        q = queries()
        async with self.db.transaction() as conn:
            if not await conn.fetchval(q["try_outbox_lock"], outbox_lock_key(user_id)):
                return None
            # Read after the lock is held: a previous holder's marks are visible now.
            rows = [OutboxRow(r["outbox_id"], r["user_id"], r["event_type"], r["payload"])
                    for r in await conn.fetch(q["outbox_pending"], user_id, limit)]
            if not rows:
                return 0
            await publish(rows)
            await conn.execute(q["outbox_mark_published"], [r.outbox_id for r in rows], clock())
        return len(rows)

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> Listener:
        """A dedicated connection calling ``on_notify`` for each notification on ``channel``."""
        return await self.db.listen(channel, on_notify)

"""The ``OutboxStore`` contract, one suite run against the in-memory twin and PostgreSQL.

Proves ``streams.testing.stores.MemoryOutboxStore`` behaves as ``streams.postgres.outbox``
where the relay can tell: the users of the oldest unpublished rows first, a user's rows in
order and bounded, marked only once published, a user held by one relay skipped by another,
wake-ups on a new row, and spawned instances' rows published like any other.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from streams.errors import BrokerUnavailable
from streams.stores import OutboxRow, SpawnedTask
from tests.integration.backends import Backend, BackendFactory, run
from tests.integration.jobdb import NOW
from tests.support import eventually

pytestmark = pytest.mark.postgres
WAIT_S = 10


def _payload(version: int) -> str:
    return f'{{"version": {version}}}'  # already in jsonb's text form


def _clock() -> datetime:
    return NOW


async def _rows(b: Backend, *users: str) -> list[int]:
    return [await b.add_outbox_row(user, _payload(i)) for i, user in enumerate(users, 1)]


def test_the_users_of_the_oldest_rows_come_first(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.outbox()
        assert await store.outbox_pending_users(10) == []
        await _rows(b, "u1", "u2", "u1", "u3")
        assert await store.outbox_pending_users(10) == ["u1", "u2", "u3"]
        assert await store.outbox_pending_users(2) == ["u1", "u2"]  # bounded by the scan

    run(backend, scenario)


def test_a_users_rows_go_in_order_bounded_and_once(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.outbox()
        ids = await _rows(b, "u1", "u2", "u1", "u1")
        sent: list[OutboxRow] = []

        async def publish(rows: list[OutboxRow]) -> None:
            sent.extend(rows)

        assert await store.publish_outbox("u1", 2, publish, _clock) == 2
        assert await store.publish_outbox("u1", 2, publish, _clock) == 1
        assert await store.publish_outbox("u1", 2, publish, _clock) == 0
        assert [(r.outbox_id, r.user_id, r.event_type, r.payload) for r in sent] == [
            (ids[0], "u1", "task.upserted", _payload(1)),
            (ids[2], "u1", "task.upserted", _payload(3)),
            (ids[3], "u1", "task.upserted", _payload(4))]
        assert await b.unpublished() == 1
        assert await store.outbox_pending_users(10) == ["u2"]

    run(backend, scenario)


def test_a_failed_publish_marks_nothing(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.outbox()
        await _rows(b, "u1", "u1")

        async def broken(rows: list[OutboxRow]) -> None:
            raise BrokerUnavailable("no broker")

        with pytest.raises(BrokerUnavailable):
            await store.publish_outbox("u1", 10, broken, _clock)
        assert await b.unpublished() == 2
        assert await store.outbox_pending_users(10) == ["u1"]

    run(backend, scenario)


def test_a_user_held_by_one_relay_is_skipped_by_another(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.outbox()
        ids = await _rows(b, "u1", "u1", "u2")
        entered, release = asyncio.Event(), asyncio.Event()
        got: list[list[int]] = []

        async def slow(rows: list[OutboxRow]) -> None:
            got.append([r.outbox_id for r in rows])
            entered.set()
            await release.wait()

        async def quick(rows: list[OutboxRow]) -> None:
            got.append([r.outbox_id for r in rows])

        holder = asyncio.create_task(store.publish_outbox("u1", 1, slow, _clock))
        await asyncio.wait_for(entered.wait(), WAIT_S)
        assert await store.publish_outbox("u1", 10, quick, _clock) is None  # held: skipped
        assert await store.publish_outbox("u2", 10, quick, _clock) == 1  # others go on
        release.set()
        assert await asyncio.wait_for(holder, WAIT_S) == 1
        assert await store.publish_outbox("u1", 10, quick, _clock) == 1  # only the rest
        assert got == [[ids[0]], [ids[2]], [ids[1]]]

    run(backend, scenario)


def test_a_new_row_wakes_a_listener(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.outbox()
        woken: list[Any] = []
        listener = await store.listen("cronorch_outbox", lambda: woken.append(1))
        try:
            assert listener.alive()
            await _rows(b, "u1")
            await eventually(lambda: bool(woken), WAIT_S, "the wake-up")
        finally:
            await listener.close()

    run(backend, scenario)


def test_a_spawned_instance_is_published_like_any_row(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        event = '{"type": "task.upserted"}'
        spawned = SpawnedTask(task_id="t1", user_id="u9", title="t", due_at=None,
                              due_date=NOW.date(), reminders_json="[]", series_id="s",
                              occurrence_key=NOW.date().isoformat(), created_at=NOW,
                              event_json=event)
        assert await (await b.spawns()).insert_spawned([spawned]) == [True]
        store = await b.outbox()
        assert await store.outbox_pending_users(10) == ["u9"]
        sent: list[OutboxRow] = []

        async def publish(rows: list[OutboxRow]) -> None:
            sent.extend(rows)

        assert await store.publish_outbox("u9", 10, publish, _clock) == 1
        assert [(r.user_id, r.event_type, r.payload) for r in sent] == [
            ("u9", "task.upserted", event)]

    run(backend, scenario)

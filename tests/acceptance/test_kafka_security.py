"""Kafka security against a real secured broker: a SASL_SSL listener with SCRAM credentials
and a certificate from a CA made for the test (streams.cli.devstack, openssl).

The worker and the tick producer reach Kafka only through the SASL_SSL listener; the test
publishes and reads through the same broker's plaintext listener. Wrong credentials or an
untrusted certificate end the process at once with a message naming the setting.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.cli import devstack
from streams.kafka import client as kafka
from streams.settings import Settings
from tests.model import ts, z
from tests.support import Proc, caught_up, publish, read_json, settings_for

pytestmark = [pytest.mark.kafka]

T0 = ts("2026-06-01T08:00:00Z")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
    """A broker of this module only, with a SASL_SSL listener beside its plaintext one."""
    base = devstack.Stack.from_env()
    plain, controller, secure = _free_ports(3)
    stack = devstack.Stack(state_dir=tmp_path_factory.mktemp("secure-kafka"),
                           cache_dir=base.cache_dir, kafka_port=plain,
                           controller_port=controller, pg_port=base.pg_port,
                           secure_port=secure)
    devstack.start_kafka(stack)  # raises InfrastructureError → the test errors, never skips
    try:
        yield stack
    finally:
        devstack.stop_kafka(stack)


def _settings(stack: devstack.Stack, **security: object) -> tuple[Settings, Settings]:
    """(plaintext settings for the test's own clients, SASL_SSL settings for the processes)."""
    plain = settings_for(f"t-sec-{uuid.uuid4().hex[:6]}",
                         kafka_bootstrap_servers=stack.bootstrap)
    secure = plain.model_copy(update={
        "kafka_bootstrap_servers": stack.secure_bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": devstack.SECURE_USER,
        "kafka_sasl_password": SecretStr(devstack.SECURE_PASSWORD),
        "kafka_ssl_cafile": str(stack.tls_dir / "ca.pem"),
        **security})
    return plain, secure


def test_worker_and_tick_producer_over_sasl_ssl(secure_stack: devstack.Stack,
                                                tmp_path: Path) -> None:
    plain, secure = _settings(secure_stack)
    due = T0 + timedelta(minutes=30)
    events = [
        {"type": "user.settings", "event_id": "s1", "occurred_at": z(T0), "user_id": "ana",
         "version": 1, "timezone": "Europe/Lisbon", "digest_time": None},
        {"type": "task.upserted", "event_id": "e1", "occurred_at": z(T0), "task": {
            "task_id": "t1", "user_id": "ana", "version": 1, "title": "Pay rent",
            "status": "open", "completed_at": None, "due_at": z(due), "due_date": None,
            "reminders": [{"before_minutes": 10}, {"before_minutes": 5}],
            "recurrence": None, "series_id": None}},
    ]

    async def scenario() -> list[dict[str, object]]:
        assert await kafka.ensure_topics(secure)  # the admin client over SASL_SSL
        worker = Proc(secure, "worker", log=tmp_path / "worker.log").start()
        try:
            await publish(plain, events)
            await caught_up(plain, "rekeyer", plain.topics.task_events, transactional=False)
            tick = Proc(secure, "tick", "--from", z(T0), "--to", z(due), "--step", "60",
                        log=tmp_path / "tick.log").start()
            assert tick.proc is not None
            assert await asyncio.to_thread(tick.proc.wait, 120) == 0
            await caught_up(plain, "timeline", plain.topics.timeline, transactional=True)
            assert worker.alive(), (tmp_path / "worker.log").read_text()[-2000:]
        finally:
            worker.kill()
        return await read_json(plain, plain.topics.notifications)

    notes = asyncio.run(scenario())
    fired = sorted((n["type"], n["fire_at"]) for n in notes)
    assert fired == [("reminder.due", z(due - timedelta(minutes=10))),
                     ("reminder.due", z(due - timedelta(minutes=5)))]


@pytest.mark.parametrize(("security", "named"), [
    ({"kafka_sasl_password": SecretStr("not-the-password")},
     "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD"),
    ({"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "mallory"},
     "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD"),
    ({"kafka_ssl_cafile": ""}, "KAFKA_SSL_CAFILE"),
])
def test_bad_credentials_fail_fast_naming_the_setting(
        secure_stack: devstack.Stack, tmp_path: Path, security: dict[str, object],
        named: str) -> None:
    _, secure = _settings(secure_stack, **security)
    log = tmp_path / "worker.log"
    worker = Proc(secure, "worker", log=log).start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(30)  # wait_ready would retry for 60 s; this must be quicker
    finally:
        worker.kill()
    text = log.read_text()
    assert code != 0
    assert named in text, text[-2000:]
    assert devstack.SECURE_PASSWORD not in text and "not-the-password" not in text


def test_a_plaintext_client_is_refused_by_the_secure_listener(
        secure_stack: devstack.Stack) -> None:
    """The listener really is secured: a client without TLS and SASL gets nowhere."""
    _, secure = _settings(secure_stack)
    bare = secure.model_copy(update={"kafka_security_protocol": "PLAINTEXT",
                                     "kafka_ssl_cafile": ""})

    async def attempt() -> None:
        await kafka.wait_ready(bare, timeout_s=3)

    with pytest.raises(Exception, match="not ready"):
        asyncio.run(attempt())



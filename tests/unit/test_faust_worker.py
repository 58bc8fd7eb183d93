"""The faust runtime of the worker (streams/faust/worker.py) without a broker: the app it
builds is the engine's twin (the role's group, the engine's transactional ids, exactly-once
on the cronorch:// transport), the faust internals it relies on, and the runtime flag.
tests/acceptance/test_reminders.py runs the worker on it against Kafka."""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.app.base import App
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.cli.main import _parser
from streams.errors import ConfigError
from streams.faust import transport
from streams.faust import worker as faust_worker
from streams.kafka.client import Output, Record
from streams.processes import worker
from streams.settings import Settings


class Handler:
    changelog_topic = None

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        pass

    def revoke(self, partition: int) -> None:
        pass

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        return []


def _settings(**overrides: Any) -> Settings:
    return Settings(app_id="unit", **overrides)


def test_the_app_is_the_roles_group_exactly_once_on_the_cronorch_transport() -> None:
    async def scenario() -> None:
        settings = _settings(kafka_bootstrap_servers="k1:9092, k2:9092")
        proc = faust_worker.Processor(settings, "timeline", "unit.timeline", Handler())
        app = proc._build("/tmp")
        assert app.conf.id == settings.group_id("timeline") == "unit-timeline"
        assert [str(u) for u in app.conf.broker] == ["cronorch://k1:9092", "cronorch://k2:9092"]
        assert app.conf.processing_guarantee.value == "exactly_once"
        assert not app.conf.stream_publish_on_commit
        (agent,) = app.agents.values()
        assert agent.concurrency == 1
        assert isinstance(app.transport, faust_worker._Transport)
        assert app.transport.TransactionManager is faust_worker._Transactions

    asyncio.run(scenario())


def test_partition_producers_are_the_engines() -> None:
    async def scenario() -> None:
        settings = _settings()
        proc = faust_worker.Processor(settings, "rekeyer", "unit.task-events", Handler())
        app = proc._build("/tmp")
        # Unbound, on a stand-in: the app's consumer would start a thread with its own loop.
        producer = faust_worker._Transactions.partition_producer(
            SimpleNamespace(app=app),  # type: ignore[arg-type]
            TP("unit.task-events", 4))
        try:
            assert producer._txn_manager.transactional_id == "unit-rekeyer-4" \
                == settings.transactional_id("rekeyer", 4)
        finally:
            await producer.stop()  # never started: only releases its client

    asyncio.run(scenario())


def test_credentials_follow_the_security_settings() -> None:
    assert faust_worker._credentials(_settings()) is None
    sasl = faust_worker._credentials(_settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u", kafka_sasl_password="p"))
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.value) == ("u", "p", "SCRAM-SHA-512")
    tls = faust_worker._credentials(_settings(kafka_security_protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials)
    assert isinstance(tls.context, ssl.SSLContext)


def test_health_until_assigned_and_while_restoring() -> None:
    proc = faust_worker.Processor(_settings(), "timeline", "unit.timeline", Handler())
    assert proc.alive() is None
    assert proc.ready() == "no partitions assigned yet"
    proc.joined = True
    proc.restoring.add(3)
    assert proc.ready() == "restoring partitions [3]"
    proc.restoring.clear()
    assert proc.ready() is None
    proc.crashed = RuntimeError("x")
    assert proc.alive() == "faust app crashed: RuntimeError"


def test_faust_internals_the_runtime_relies_on() -> None:
    # Transactions only run inside faust's Worker unless the app says it is in one.
    source = Path(inspect.getfile(App)).read_text()
    in_transaction = source.split("def in_transaction")[1][:400]
    assert "self.in_worker" in in_transaction
    # The app builds its consumer's transport (whose transaction manager is ours) here.
    assert "transport.by_url(self.conf.broker_consumer[0])" in inspect.getsource(
        App._new_transport)
    # The revoke waits for the events in flight and commits them before the transaction
    # manager releases the partitions; the signal the state is dropped on comes after.
    revoked = inspect.getsource(App._on_partitions_revoked)
    assert (revoked.index("_consumer_wait_empty")
            < revoked.index("transactions.on_partitions_revoked")
            < revoked.index("on_partitions_revoked.send"))
    # The broker timestamp faust hands over is in seconds.
    assert "timestamp / 1000.0" in inspect.getsource(
        faust_aiokafka.Consumer._to_message)
    assert issubclass(faust_worker._Transactions, transport.TransactionManager)


def test_runtime_flag() -> None:
    assert _parser().parse_args(["worker"]).runtime == "native"
    assert _parser().parse_args(["worker", "--runtime", "faust"]).runtime == "faust"
    with pytest.raises(SystemExit):
        _parser().parse_args(["worker", "--runtime", "flink"])
    with pytest.raises(ConfigError, match="runtime"):
        asyncio.run(worker.run(_settings(), runtime="flink"))

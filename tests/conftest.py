"""Shared fixtures. Tests that need Kafka or PostgreSQL fail (never skip) when they are missing."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import pytest

from streams.cli import devstack
from streams.kafka import client as kafka
from streams.settings import Settings
from tests.support import settings_for


@pytest.fixture(scope="session")
def stack() -> devstack.Stack:
    """The local stack, started if it is not running; a failure to start fails the test."""
    stack = devstack.Stack.from_env()
    devstack.up(stack)
    asyncio.run(kafka.wait_ready(Settings.from_env(), timeout_s=60))
    return stack


@pytest.fixture
def settings(stack: devstack.Stack, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings with topics, groups and transactional ids of this test only."""
    # A parametrized test's name has brackets, which topic names may not.
    name = re.sub(r"[^a-z0-9.-]", "-", request.node.name.lower())[:40]
    settings = settings_for(f"t-{name}-{uuid.uuid4().hex[:6]}")
    asyncio.run(kafka.ensure_topics(settings))
    yield settings


def pytest_configure(config: pytest.Config) -> None:
    # CI runs the property tests derandomized: the same examples every run, so a red run is
    # reproducible; locally hypothesis explores new examples each time.
    import os

    from hypothesis import settings as hsettings

    hsettings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI") == "true":
        hsettings.load_profile("ci")

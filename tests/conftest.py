"""Shared fixtures: one real etcd for the session, a fresh client and service name per test."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdServer


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def one_event_loop() -> AsyncIterator[None]:
    """Hold anyio's test runner, and so one event loop, for the whole session.

    grpc.aio binds its completion-queue poller to the loop it first ran on; with a new loop per
    test, a late gRPC callback can land on a closed loop and fail an unrelated test.
    """
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Only async tests can take the async fixture above (a sync test asking for it is an error).
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "one_event_loop")


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One etcd for every test that only reads and writes keys under its own service."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[aiodiscovery.EtcdClient]:
    client = await aiodiscovery.connect(etcd.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def service() -> str:
    """A service name no other test uses, so tests can share the session's etcd."""
    return f"test/{uuid.uuid4().hex[:12]}/svc"

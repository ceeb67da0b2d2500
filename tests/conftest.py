"""Shared fixtures: one real etcd for the session, a fresh client and service name per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdServer


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


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

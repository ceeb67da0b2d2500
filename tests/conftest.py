"""Shared fixtures: the aiodiscovery pytest plugin's, under the names these tests use."""

from __future__ import annotations

import inspect

import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdServer

pytest_plugins = ("pytester",)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every async test shares the plugin's one event loop, not only those using its fixtures:
    # the pool and example tests run grpc.aio servers of their own.
    for item in items:
        coroutine = isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
        if coroutine and "etcd_event_loop" not in item.fixturenames:
            item.fixturenames.insert(0, "etcd_event_loop")


@pytest.fixture(scope="session")
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """One etcd for every test that only reads and writes keys under its own service."""
    return etcd_server


@pytest.fixture
def client(etcd_client: aiodiscovery.EtcdClient) -> aiodiscovery.EtcdClient:
    """A client of the session's etcd, closed after the test."""
    return etcd_client


@pytest.fixture
def service(etcd_service: str) -> str:
    """A service name no other test uses, so tests can share the session's etcd."""
    return etcd_service

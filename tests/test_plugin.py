"""The pytest plugin as a user meets it: a test file of a few lines, run by a fresh pytest."""

from __future__ import annotations

import pytest

from aiodiscovery.testing import etcd_binary, etcd_version

# Each run is a new interpreter (runpytest_subprocess): one process, one loop, as in a user's
# suite; running it in this process would put a second event loop next to ours.
RUN_TIMEOUT = 120

USER_TESTS = '''
import asyncio
import contextlib

import pytest

from aiodiscovery.testing import etcd_binary, etcd_version

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager

pytestmark = pytest.mark.anyio
LOOPS = []  # the loops themselves: a freed loop's id() could be reused


@pytest.fixture
def etcd():
    """A user fixture of the same name as the project's alias: no clash with the plugin."""
    return "mine"


async def test_register_list_watch(etcd_client, etcd_service, etcd):
    assert etcd == "mine"
    LOOPS.append(asyncio.get_running_loop())
    em = EndpointManager(etcd_client, etcd_service)
    await em.add_endpoint(f"{etcd_service}/e1", Endpoint("127.0.0.1:50051"))
    assert list(await em.list_endpoints()) == [f"{etcd_service}/e1"]
    async with contextlib.aclosing(em.watch()) as batches:
        assert [u.key for u in await anext(batches)] == [f"{etcd_service}/e1"]


async def test_services_are_fresh_and_the_server_is_shared(etcd_client, etcd_service, etcd_server):
    LOOPS.append(asyncio.get_running_loop())
    assert await EndpointManager(etcd_client, etcd_service).list_endpoints() == {}
    assert list(etcd_client.urls) == [etcd_server.url]


async def test_a_cluster_on_request(etcd_cluster):
    LOOPS.append(asyncio.get_running_loop())
    assert len(etcd_cluster.members) == 3
    client = await aiodiscovery.connect(etcd_cluster.urls)
    try:
        await client.put(b"k", b"v")
    finally:
        await client.close()


def test_one_loop_for_every_async_test():
    assert len(LOOPS) == 3 and len({id(loop) for loop in LOOPS}) == 1
'''


def test_a_users_tests_get_etcd_a_client_a_service_and_one_loop(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=4)


def test_the_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for fixture in (
        "etcd_event_loop [[]session scope[]]",
        "etcd_server [[]session scope[]]",
        "etcd_client",
        "etcd_service",
        "etcd_cluster",
    ):
        result.stdout.fnmatch_lines([f"{fixture} -- *pytest_plugin.py:*", "    [A-Z]*"])


def test_another_backend_gets_a_clear_error_not_a_hang(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest

from aiodiscovery.testing import etcd_binary, etcd_version

@pytest.fixture(params=["trio"])
def anyio_backend(request):
    return request.param
"""
    )
    pytester.makepyfile(
        test_trio="""
import pytest

from aiodiscovery.testing import etcd_binary, etcd_version

pytestmark = pytest.mark.anyio

async def test_needs_asyncio(etcd_client):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*etcd_client needs the asyncio backend*not 'trio'*"])


def test_unused_the_plugin_starts_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
import aiodiscovery.testing._process as process

def test_plain():
    assert not process._LIVE
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)


def test_the_etcd_binary_option_runs_that_etcd_everywhere_and_names_it(
    pytester: pytest.Pytester,
) -> None:
    own = pytester.path / "bin"
    own.mkdir()
    for name in ("etcd", "etcdctl"):
        (own / name).symlink_to(etcd_binary(name))
    pytester.makepyfile(
        test_which=f"""
import os
from pathlib import Path

import pytest

from aiodiscovery.testing import etcd_binary, etcd_version

from aiodiscovery.testing import EtcdServer

OWN = Path({str(own / "etcd")!r})


def test_the_session_server(etcd_server):
    assert Path(f"/proc/{{etcd_server.pid}}/cmdline").read_bytes().split(b"\\0")[0] == bytes(OWN)


def test_servers_of_my_own_and_children():
    assert EtcdServer().binary == OWN
    assert os.environ["AIODISCOVERY_ETCD"] == str(OWN)
"""
    )
    version = ".".join(map(str, etcd_version()))
    result = pytester.runpytest_subprocess(
        f"--etcd-binary={own / 'etcd'}", "-p", "no:cacheprovider", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"aiodiscovery: etcd {version} at {own / 'etcd'}"])

    result = pytester.runpytest_subprocess(
        f"--etcd-binary={pytester.path / 'nothing'}", "-p", "no:cacheprovider", timeout=RUN_TIMEOUT
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--etcd-binary: *nothing* is not an executable etcd binary"])

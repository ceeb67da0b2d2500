"""connect(): URL handling, clear failures and fail-over between real etcd members."""

from __future__ import annotations

import logging
import time

import pytest

import aiodiscovery
from aiodiscovery import Endpoint, EndpointManager, EtcdUnavailableError, Watcher
from aiodiscovery._etcd.urls import parse_urls
from aiodiscovery.testing import EtcdCluster, EtcdServer, free_port

from .helpers import until, until_accepted

pytestmark = pytest.mark.anyio


def test_parse_urls_forms() -> None:
    assert parse_urls("http://127.0.0.1:2379") == ("http://127.0.0.1:2379",)
    assert parse_urls(" 127.0.0.1:1, http://127.0.0.1:2 ,") == (
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    )
    assert parse_urls(["http://[::1]:2379"]) == ("http://[::1]:2379",)


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ("", "no etcd URL"),
        ("ftp://h:1", "http:// or https://"),
        ("http://h", "host and a port"),
        ("http://h:99999", "bad port"),
        ("http://h:1/v3", "path"),
        ("http://a:1,https://b:2", "mix http and https"),
    ],
)
def test_parse_urls_rejects(urls: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_urls(urls)


def test_several_hostnames_are_accepted_one_channel_each() -> None:
    # Each member has a channel of its own, so DNS names need not be IP literals any more.
    client = aiodiscovery.EtcdClient("http://a.example:2379,http://b.example:2379")
    assert client.urls == ("http://a.example:2379", "http://b.example:2379")


def test_a_url_with_a_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="must not carry a user name or password") as info:
        parse_urls("http://root:hunter2@127.0.0.1:2379")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        parse_urls("http://127.0.0.1:1,127.0.0.1:1")


async def test_unreachable_etcd_fails_fast_and_clearly() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(EtcdUnavailableError, match=f"127.0.0.1:{port} within 0.5 s"):
        await aiodiscovery.connect(f"http://127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - started < 5


async def test_connect_returns_a_working_aetcd_client(etcd: EtcdServer) -> None:
    client = await aiodiscovery.connect(etcd.url)
    try:
        await client.put(b"connect-test", b"v")
        got = await client.get(b"connect-test")
        assert got is not None and got.value == b"v"
        assert repr(client) == f"<EtcdClient {etcd.url} connected>"
    finally:
        await client.close()


async def test_a_dead_first_url_is_skipped(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = await aiodiscovery.connect([dead, etcd.url], timeout=5)
    try:
        await client.put(b"failover-test", b"v")
    finally:
        await client.close()


async def test_fails_over_when_the_member_in_use_dies(service: str) -> None:
    async with EtcdCluster(3) as cluster:
        client = await aiodiscovery.connect(cluster.urls)
        try:
            em = EndpointManager(client, service)
            await em.add_endpoint(f"{service}/before", Endpoint("a:1"))
            # Kill exactly the member the client uses.
            active = client.members.active.url
            next(m for m in cluster.members if m.url == active).kill()
            # A request caught mid-way by the death may time out (as in Go); a retry must land.
            await until_accepted(
                lambda: em.add_endpoint(f"{service}/after", Endpoint("b:1")), timeout=20
            )
            assert set(await em.list_endpoints()) == {f"{service}/before", f"{service}/after"}
        finally:
            await client.close()


async def test_heartbeat_is_how_long_a_watched_member_may_stay_silent(
    service: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A member of its own to freeze: the session's etcd serves every other test.
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url, heartbeat=0.3)
        try:
            async with Watcher(client, service) as watcher:
                assert watcher.snapshot is not None
                with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
                    etcd.stop()
                    try:
                        # Silent past a heartbeat, unanswered for another: given up, saying so.
                        await until(
                            lambda: any(
                                "no answer within 0.3 s" in r.getMessage() for r in caplog.records
                            ),
                            timeout=10,
                        )
                    finally:
                        etcd.resume()
        finally:
            await client.close()
    with pytest.raises(ValueError, match="heartbeat must be positive"):
        await aiodiscovery.connect("http://127.0.0.1:1", heartbeat=0)

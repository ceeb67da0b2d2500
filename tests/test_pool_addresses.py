"""What the pool dials: registered Addrs are network addresses, never gRPC target URIs."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    Address,
    BalancedChannel,
    Endpoint,
    EndpointManager,
    EndpointSet,
    EtcdClient,
    PoolStatistics,
    address_refusal,
    allow_networks,
    parse_address,
    resolve,
)
from aiodiscovery._logsafe import safe
from aiodiscovery._pool.options import PoolOptions
from aiodiscovery._pool.pool import Pool

from .helpers import until
from .servers import SERVICE
from .test_pool import call, echo_servers, ready, where

pytestmark = pytest.mark.anyio

SECRET = "Bearer do-not-leak"


@pytest.mark.parametrize(
    ("addr", "target", "text"),
    [
        ("127.0.0.1:50051", "dns:///127.0.0.1:50051", "127.0.0.1:50051"),
        ("[::1]:80", "dns:///[::1]:80", "[::1]:80"),
        ("[0:0::1]:80", "dns:///[::1]:80", "[::1]:80"),
        ("localhost:1", "dns:///localhost:1", "localhost:1"),
        ("db-1.svc.cluster.local.:65535", "dns:///db-1.svc.cluster.local.:65535", None),
        ("_grpc.example:443", "dns:///_grpc.example:443", None),
        ("xn--bcher-kva.example:8080", "dns:///xn--bcher-kva.example:8080", None),
    ],
)
def test_plain_addresses_are_dialled_with_an_explicit_scheme(
    addr: str, target: str, text: str | None
) -> None:
    address = parse_address(addr)
    assert address.target == target
    assert str(address) == (text or addr)


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("unix:/run/app.sock", "'/'"),
        ("unix:///run/app.sock", "'/'"),
        ("unix-abstract:name", "port"),
        ("dns://8.8.8.8/example.com:443", "'/'"),
        ("dns:///example.com:443", "'/'"),
        ("ipv4:10.0.0.1:80,10.0.0.2:80", "','"),
        ("ipv4:10.0.0.1:80", "scheme"),
        ("ipv6:[::1]:80", "'\\['|scheme"),
        ("10.0.0.1:80,10.0.0.2:80", "','"),
        ("xds:///svc:80", "'/'"),
        ("user@host:80", "'@'"),
        ("10.0.0.1", "no port"),
        (":50051", "no host"),
        ("", "empty"),
        ("host:0", "port"),
        ("host:65536", "port"),
        ("host:080", "port"),
        ("host:+80", "'\\+'"),
        ("host: 80", "space"),
        ("host\t:80", "control"),
        ("host:80\n", "control"),
        ("ho\x00st:80", "control"),
        ("\ud800:1", "non-ASCII"),
        ("bücher.example:80", "xn--"),
        ("::1:80", "brackets"),
        ("[::1]", "port"),
        ("[10.0.0.1]:80", "IPv6"),
        ("[fe80::1%25eth0]:80", "'%'"),
        ("1.2.3:80", "IPv4"),
        ("010.0.0.1:80", "leading zeros"),
        ("256.0.0.1:80", "IPv4"),
        ("0x7f.1:80", "number"),
        ("-bad.example:80", "valid name"),
        ("a..b:80", "valid name"),
        ("a" * 64 + ".example:80", "valid name"),
        ("a" * 300 + ":80", "longer"),
    ],
)
def test_anything_else_is_refused(addr: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_address(addr)
    if len(addr) > 3:
        assert addr not in str(info.value), "the message must not echo the value"


def test_allow_networks() -> None:
    allowed = allow_networks("10.0.0.0/8", ipaddress.ip_network("fd00::/8"))
    assert allowed(parse_address("10.1.2.3:80"))
    assert allowed(parse_address("[fd12::1]:80"))
    assert allowed(parse_address("[::ffff:10.0.0.1]:80")), "an IPv4-mapped address is IPv4"
    assert not allowed(parse_address("11.0.0.1:80"))
    assert not allowed(parse_address("[fe80::1]:80"))
    assert not allowed(parse_address("ten.example:80")), "a name resolves inside gRPC: refused"
    assert repr(allowed) == "allow_networks('10.0.0.0/8', 'fd00::/8')"
    with pytest.raises(ValueError):
        allow_networks()
    with pytest.raises(ValueError):
        allow_networks("10.0.0.1/8")


def test_safe_keeps_a_log_line_one_line() -> None:
    assert safe("svc/10.0.0.1:80") == "svc/10.0.0.1:80"
    assert safe("a\nERROR forged\r\n") == "a\\nERROR forged\\r\\n"
    assert safe("\ud800\x00\u2028\u202e\\") == "\\ud800\\x00\\u2028\\u202e\\\\"
    assert safe("héllo 中") == "héllo 中"


class Trap:
    """A gRPC server where no call may ever arrive, on a TCP port and two Unix sockets."""

    def __init__(self, directory: Path) -> None:
        self.calls: list[dict[str, str]] = []
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(self._unary)}
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.socket = directory / "trap.sock"
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.abstract = f"aiodiscovery-trap-{uuid.uuid4().hex}"
        self.server.add_insecure_port(f"unix-abstract:{self.abstract}")

    async def _unary(self, request: bytes, context: Any) -> bytes:
        self.calls.append(dict(context.invocation_metadata()))
        return b"trap:" + request

    def hostile_addrs(self) -> list[str]:
        """Addrs that old clients dialled as gRPC targets, each leading here."""
        tcp = f"127.0.0.1:{self.port}"
        return [
            f"unix:{self.socket}",
            f"unix://{self.socket}",
            f"unix-abstract:{self.abstract}",
            f"ipv4:{tcp},{tcp}",
            f"ipv4:{tcp}",
            f"dns:///{tcp}",
            f"{tcp}\x00",
            f"{tcp}\nforged log line",
            "\ud800:1",
            f"{tcp}{' ' * 5000}",
        ]


@contextlib.asynccontextmanager
async def trap() -> AsyncIterator[Trap]:
    with tempfile.TemporaryDirectory(prefix="aiod") as directory:
        server = Trap(Path(directory))
        await server.server.start()
        try:
            yield server
        finally:
            await server.server.stop(None)


async def put_raw(client: EtcdClient, key: str, addr: str) -> None:
    """Write a value as anyone with write access could, escapes and all."""
    await client.put(key.encode(), json.dumps({"Op": 0, "Addr": addr}).encode())


async def only_the_good_one_serves(channel: BalancedChannel) -> PoolStatistics:
    """Calls carrying a secret all reach s0, the one dialable endpoint; the channel's statistics."""
    await ready(channel, 1)
    replies = [await call(channel, metadata=(("authorization", SECRET),)) for _ in range(20)]
    assert where(replies) == {"s0": 20}
    return channel.statistics()


async def test_hostile_addrs_are_never_dialled(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trap() as bait, echo_servers(2) as servers:
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/good", Endpoint(servers[0].address))
        hostile = bait.hostile_addrs()
        # A key can hold a newline too: its warning must stay one line.
        keys = [f"{service}/bad{i}" for i in range(len(hostile) - 1)] + [f"{service}/x\nforged"]
        for key, addr in zip(keys, hostile, strict=True):
            await put_raw(client, key, addr)
        with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
            async with await resolve(client, service) as channel:
                stats = await only_the_good_one_serves(channel)
                assert set(stats.skipped) == set(keys)
                assert stats.skipped_endpoints == len(hostile)
                assert list(stats.subchannels) == [servers[0].address]
                # The pool still follows etcd: a new endpoint takes calls.
                await em.add_endpoint(f"{service}/more", Endpoint(servers[1].address))
                await ready(channel, 2)
                assert set(where([await call(channel) for _ in range(10)])) == {"s0", "s1"}
                # Re-writing a bad value as it was warns no more; a new bad Addr does.
                await put_raw(client, f"{service}/bad0", hostile[0])
                await put_raw(client, f"{service}/bad1", "unix:/elsewhere")
                revision = (await client.get(f"{service}/bad1".encode())).mod_revision
                await until(lambda: channel.statistics().revision >= revision)
                assert channel.statistics().skipped_endpoints == len(hostile) + 1
    assert bait.calls == []
    warnings = [r.getMessage() for r in caplog.records if "not dialling" in r.getMessage()]
    assert len(warnings) == len(hostile) + 1
    assert all("\n" not in w and "\x00" not in w and len(w) < 1000 for w in warnings)
    assert any("\\nforged log line" in w for w in warnings)
    assert any("/x\\nforged" in w for w in warnings)


async def test_an_address_filter_admits_only_what_it_allows(
    client: EtcdClient, service: str
) -> None:
    class Unfit:
        def __bool__(self) -> bool:
            raise RuntimeError("not a bool")

    def picky(address: Address) -> Any:
        if address.port == servers[1].port:
            raise RuntimeError("filter bug")
        if address.port == servers[2].port:
            return Unfit()
        return allowed(address)

    allowed = allow_networks("127.0.0.0/8")
    async with trap() as bait, echo_servers(3) as servers:
        em = EndpointManager(client, service)
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        await em.add_endpoint(f"{service}/by-name", Endpoint(f"localhost:{bait.port}"))
        async with await resolve(client, service, address_filter=allowed) as channel:
            await ready(channel, 3)
            assert list(channel.statistics().skipped) == [f"{service}/by-name"]
        async with await resolve(client, service, address_filter=picky) as channel:
            await ready(channel, 1)
            assert where([await call(channel) for _ in range(10)]) == {"s0": 10}
            skipped = channel.statistics().skipped
            assert set(skipped) == {f"{service}/{n}" for n in ("s1", "s2", "by-name")}
            assert "filter bug" in skipped[f"{service}/s1"]
            assert "not a bool" in skipped[f"{service}/s2"]
    assert bait.calls == []


class Feed:
    """Endpoint sets handed to a pool by hand, as its Watcher would."""

    def __init__(self) -> None:
        self.snapshot = EndpointSet()
        self._changed = anyio.Event()

    def publish(self, endpoints: dict[str, Endpoint]) -> None:
        self.snapshot = EndpointSet(endpoints, self.snapshot.revision + 1)
        self._changed.set()
        self._changed = anyio.Event()

    async def snapshots(self) -> AsyncIterator[EndpointSet]:
        while True:
            yield self.snapshot
            await self._changed.wait()

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def test_one_endpoint_cannot_stop_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    async with echo_servers(2) as servers, anyio.create_task_group() as tg:

        class OneUndialable(PoolOptions):
            __slots__ = ()

            def dial(
                self, address: Address, options: Sequence[tuple[str, Any]]
            ) -> grpc.aio.Channel:
                if address.port == servers[1].port:
                    raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
                return super().dial(address, options)

        pool = Pool("svc", OneUndialable(drain_timeout=1))
        feed = Feed()
        await tg.start(pool.serve, feed)
        with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
            feed.publish(
                {
                    "svc/good": Endpoint(servers[0].address, nested(5000)),
                    "svc/undialable": Endpoint(servers[1].address),
                    "svc/surrogate": Endpoint("\ud800:1"),
                    "svc/nul": Endpoint("a\x00:1"),
                }
            )
            await until(lambda: [s.state for s in pool.usable] == [grpc.ChannelConnectivity.READY])
            skipped = pool.statistics().skipped
            assert set(skipped) == {"svc/undialable", "svc/surrogate", "svc/nul"}
            assert "surrogates not allowed" in skipped["svc/undialable"]
            # Metadata too deep for == is taken as changed, not as a reason to stop.
            feed.publish({"svc/good": Endpoint(servers[0].address, nested(5000))})
            await until(lambda: pool.statistics().revision == 2)
        assert list(pool.statistics().subchannels) == [servers[0].address]
        assert pool.stop_reason is None
        assert len([r for r in caplog.records if "not dialling" in r.getMessage()]) == 3
        pool.begin_close(None)


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("0.0.0.0:1", "unspecified"),
        ("[::]:1", "unspecified"),
        ("[::ffff:0.0.0.0]:1", "unspecified"),
        ("169.254.169.254:80", "link-local"),
        ("[fe80::1]:1", "link-local"),
        ("224.0.0.1:1", "multicast"),
        ("[ff02::1]:1", "multicast"),
    ],
)
def test_default_policy_refuses_addresses_no_client_should_dial(addr: str, why: str) -> None:
    reason = address_refusal(addr)
    assert reason is not None and why in reason and "allow_networks" in reason
    # An explicit filter decides alone: the operator may allow them.
    assert address_refusal(addr, allow_networks("0.0.0.0/0", "::/0")) is None


@pytest.mark.parametrize("addr", ["127.0.0.1:1", "[::1]:1", "10.0.0.1:1", "localhost:1"])
def test_default_policy_keeps_loopback_private_and_names(addr: str) -> None:
    assert address_refusal(addr) is None


async def test_a_bind_address_gets_no_call_while_a_good_one_serves(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trap() as bait, echo_servers(1) as servers:
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/good", Endpoint(servers[0].address))
        # A server's bind address registered by mistake: dialled, it reaches this very host.
        bound = f"{service}/bound"
        await em.add_endpoint(bound, Endpoint(f"0.0.0.0:{bait.port}"))
        await em.add_endpoint(f"{service}/meta", Endpoint("169.254.169.254:80"))
        with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
            async with await resolve(client, service) as channel:
                stats = await only_the_good_one_serves(channel)
                assert set(stats.skipped) == {bound, f"{service}/meta"}
                assert "unspecified" in stats.skipped[bound]
                assert stats.skipped_endpoints == 2
        assert bait.calls == []
        warnings = [r.getMessage() for r in caplog.records if "not dialling" in r.getMessage()]
        assert len(warnings) == 2
        # The operator may allow it: then it is dialled like any other.
        allowed = allow_networks("0.0.0.0/32", "127.0.0.0/8")
        async with await resolve(client, service, address_filter=allowed) as channel:
            await ready(channel, 2)
            assert set(where([await call(channel) for _ in range(10)])) == {"s0", "trap"}

"""gRPC across languages through one registry: Go clients of Python servers, and the reverse.

The Go side resolves ``etcd:///<service>`` with etcd's own resolver (clientv3/naming/resolver,
grpc-go 1.33, round_robin) and registers servers with etcd's Manager under a kept-alive lease.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from aiodiscovery import Endpoint, EndpointManager, EtcdClient, Registrar, resolve
from aiodiscovery._backoff import Backoff
from aiodiscovery.testing import EtcdServer

from ..helpers import eventually, until
from ..servers import EchoServer, method
from .probe import GoChild

pytestmark = pytest.mark.anyio


@pytest.fixture
async def go_client(naming_probe: Path, etcd: EtcdServer, service: str) -> AsyncIterator[GoChild]:
    """A Go gRPC client of etcd:///<service>: each line sent makes one call."""
    async with await GoChild.start(
        naming_probe, "client", "-etcd", etcd.url, "-target", service
    ) as child:
        yield child


async def go_call(client: GoChild) -> str:
    await client.send("call")
    return await client.readline()


async def go_calls_until(client: GoChild, predicate: str, timeout: float = 20) -> str:
    """Call until a reply starts with ``predicate`` (each call has its own 2 s deadline)."""
    backoff = Backoff(initial=0.02, cap=0.2)
    with anyio.fail_after(timeout):
        while not (reply := await go_call(client)).startswith(predicate):
            await backoff.sleep()
    return reply


async def test_go_client_reaches_a_registrar_server_until_the_block_exits(
    client: EtcdClient, service: str, go_client: GoChild
) -> None:
    async with EchoServer("py") as server:
        # The weight in the Go-safe string form: Go's round_robin hashes metadata, a string is fine.
        endpoint = Endpoint.with_attributes(server.address, weight=2)
        async with Registrar(client, service, endpoint, ttl=5):
            assert await go_calls_until(go_client, "OK") == "OK py:go"
            calls = server.calls
            for _ in range(3):
                assert await go_call(go_client) == "OK py:go"
            assert server.calls == calls + 3
        # The server still runs, but its registration is gone: Go's resolver drops it.
        reply = await go_calls_until(go_client, "ERR")
        assert reply.startswith("ERR Unavailable"), reply
        calls = server.calls
        assert (await go_call(go_client)).startswith("ERR Unavailable")
        assert server.calls == calls


async def test_object_metadata_crashes_go_clients_string_metadata_does_not(
    client: EtcdClient, service: str, naming_probe: Path, etcd: EtcdServer
) -> None:
    # etcd-io/etcd#19700, grpc/grpc-go#8225: round_robin keys a map by the resolver address,
    # Metadata included, and a Go map (a JSON object) is not hashable. Why weights go in a string.
    async with EchoServer("py") as server:
        await EndpointManager(client, service).add_endpoint(
            f"{service}/obj", Endpoint(server.address, {"weight": 2})
        )
        child = await GoChild.start(naming_probe, "client", "-etcd", etcd.url, "-target", service)
        async with child:
            # No call needed: the resolver hands the address to round_robin as soon as it dials.
            with anyio.fail_after(20):
                code = await child.process.wait()
            assert code != 0
            assert child.process.stderr is not None
            stderr = (await child.process.stderr.receive(1 << 16)).decode(errors="replace")
            assert "hash of unhashable type map[string]interface {}" in stderr


async def go_server(stack: AsyncExitStack, probe: Path, etcd: EtcdServer, key: str) -> GoChild:
    service, name = key.rsplit("/", 1)
    flags = ["-etcd", etcd.url, "-target", service, "-key", key, "-name", name, "-ttl", "2"]
    server = await stack.enter_async_context(await GoChild.start(probe, "serve", *flags))
    assert (await server.readline()).startswith("READY 127.0.0.1:")
    return server


async def test_resolve_balances_go_servers_and_drops_a_killed_one(
    client: EtcdClient, service: str, naming_probe: Path, etcd: EtcdServer
) -> None:
    em = EndpointManager(client, service)
    async with AsyncExitStack() as stack:
        servers = {
            name: await go_server(stack, naming_probe, etcd, f"{service}/{name}")
            for name in ("go0", "go1", "go2")
        }
        channel = await stack.enter_async_context(await resolve(client, service))
        call = channel.unary_unary(method("Unary"))
        await until(lambda: len(channel.statistics().subchannels) == 3)
        replies: Counter[bytes] = Counter()
        with anyio.fail_after(20):
            while len(replies) < 3:
                replies[await call(b"x")] += 1
        replies.clear()
        for _ in range(30):
            replies[await call(b"x")] += 1
        # round_robin: each READY server takes its turn.
        assert set(replies) == {b"go0:x", b"go1:x", b"go2:x"}
        assert min(replies.values()) >= 5, replies

        # SIGKILL: no revoke, no clean close; the lease (TTL 2 s) must expire on etcd's side.
        killed = await em.list_endpoints()
        servers["go1"].kill()
        await eventually(em.list_endpoints, lambda eps: f"{service}/go1" not in eps, timeout=30)

        def live() -> set[str]:
            subs = channel.statistics().subchannels
            return {a for a, s in subs.items() if not s.draining}

        await until(lambda: killed[f"{service}/go1"].addr not in live(), timeout=10)
        assert live() == {killed[f"{service}/{n}"].addr for n in ("go0", "go2")}
        replies.clear()
        for _ in range(10):
            replies[await call(b"y")] += 1
        assert set(replies) == {b"go0:y", b"go2:y"}

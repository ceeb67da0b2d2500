"""Every resolve() option the README documents has an effect a test can see."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
import pytest

from aiodiscovery import BalancedChannel, Endpoint, EndpointManager, EtcdClient, Registrar, resolve
from aiodiscovery.testing import TLSFiles

from .helpers import until
from .servers import SERVICE, EchoServer, method
from .test_pool import call, echo_servers, ready, registered, resolve_holding, where

pytestmark = pytest.mark.anyio

INSPECT = "test.Inspect"


class InspectedServer(EchoServer):
    """An echo server that also tells each caller how it sees it: peer and user agent."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    INSPECT, {"Whoami": grpc.unary_unary_rpc_method_handler(self._whoami)}
                ),
            )
        )

    async def _whoami(self, request: bytes, context: Any) -> bytes:
        user_agent = dict(context.invocation_metadata()).get("user-agent", "")
        return f"{self.name}|{context.peer()}|{user_agent}".encode()


async def whoami(channel: grpc.aio.Channel) -> list[str]:
    """[server name, our connection as the server sees it, our user agent]."""
    reply: bytes = await channel.unary_unary(f"/{INSPECT}/Whoami")(b"")
    return reply.decode().split("|")


class UnaryOnlyServer(EchoServer):
    """An echo server built from its own ``grpc.aio.server``: TLS, or server options."""

    def __init__(
        self,
        name: str,
        *,
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        super().__init__(name)
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(self._unary)}
                ),
            )
        )
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def started(servers: Sequence[EchoServer]) -> AsyncIterator[Sequence[EchoServer]]:
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        yield servers


def draining(channel: BalancedChannel, address: str) -> bool:
    sub = channel.statistics().subchannels.get(address)
    return sub is None or sub.draining


def state(channel: BalancedChannel, address: str) -> str:
    return channel.statistics().subchannels[address].state


async def hold_one_on(channel: BalancedChannel, servers: Sequence[EchoServer], target: int) -> Any:
    """Start Hold calls until one is held on ``servers[target]``; return that call.

    The others stay held on their servers until those are released.
    """
    held: list[Any] = []
    while not servers[target].holding:
        held.append(channel.unary_unary(method("Hold"))(b"h"))
        await until(lambda: sum(s.holding for s in servers) == len(held))
    return held[-1]


async def test_options_reach_every_subchannel(client: EtcdClient, service: str) -> None:
    agent = "aiodiscovery-options-test/1"
    async with started([InspectedServer(f"s{i}") for i in range(3)]) as servers:
        async with registered(client, service, servers):
            options = [("grpc.primary_user_agent", agent)]
            async with await resolve(client, service, options=options) as channel:
                await ready(channel, 3)
                seen = [await whoami(channel) for _ in range(6)]
    assert sorted(name for name, _, _ in seen) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert all(user_agent.startswith(f"{agent} grpc-python") for _, _, user_agent in seen), seen


async def test_compression_applies_to_every_subchannel(client: EtcdClient, service: str) -> None:
    # A server that accepts only uncompressed messages tells whether the client compressed.
    identity_only = [("grpc.compression_enabled_algorithms_bitset", 1)]
    servers = [UnaryOnlyServer(f"s{i}", options=identity_only) for i in range(2)]
    async with started(servers), registered(client, service, servers):
        plain = await resolve(client, service)
        gzip = await resolve(client, service, compression=grpc.Compression.Gzip)
        async with plain, gzip:
            await ready(plain, 2)
            await ready(gzip, 2)
            assert where([await call(plain) for _ in range(4)]) == {"s0": 2, "s1": 2}
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(gzip)
                assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
                assert "'gzip' is disabled" in (refused.value.details() or "")
            assert [s.picks for s in gzip.statistics().subchannels.values()] == [2, 2]


async def test_credentials_make_every_subchannel_tls(
    client: EtcdClient, service: str, tmp_path: Path
) -> None:
    files = TLSFiles.generate(tmp_path / "pki")
    server_credentials = grpc.ssl_server_credentials(
        [(files.server_key_path.read_bytes(), files.server_cert_path.read_bytes())]
    )
    servers = [UnaryOnlyServer(f"s{i}", credentials=server_credentials) for i in range(2)]
    trusted = grpc.ssl_channel_credentials(files.ca_path.read_bytes())
    async with started(servers), registered(client, service, servers):
        async with await resolve(client, service, credentials=trusted) as channel:
            await ready(channel, 2)
            assert where([await call(channel) for _ in range(4)]) == {"s0": 2, "s1": 2}
        # Without them the same servers cannot be reached: TLS came from the option.
        async with await resolve(client, service) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await call(channel, wait_for_ready=True, timeout=1)
            assert plaintext.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert channel.statistics().by_state().get("READY") is None
    assert [s.calls for s in servers] == [2, 2]


async def test_drain_timeout_bounds_a_drain(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_servers(2) as servers, registered(client, service, servers[:1]):
        async with await resolve(client, service, drain_timeout=0.5) as channel:
            async with Registrar(client, service, servers[1].address, ttl=5):
                await ready(channel, 2)
                stuck = await hold_one_on(channel, servers, 1)
            # Removed with a call that never ends: the drain waits drain_timeout for it, not
            # the default 30 s, then closes the channel, which cancels the call.
            with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
                await until(lambda: servers[1].address not in channel.statistics().subchannels)
            # grpc.aio's close cancels the call, as on any channel closed under its calls.
            await until(stuck.done)
            assert stuck.cancelled() and await stuck.code() is grpc.StatusCode.CANCELLED
            await until(lambda: servers[1].cancelled == 1)
            assert "with 1 calls still in flight" in caplog.text


async def test_an_endpoint_added_back_while_draining_is_reused(
    client: EtcdClient, service: str
) -> None:
    async with started([InspectedServer(f"s{i}") for i in range(2)]) as servers:
        async with registered(client, service, servers[:1]):
            channel = await resolve(client, service)
            async with channel:
                async with Registrar(client, service, servers[1].address, ttl=5):
                    await ready(channel, 2)
                    held = await hold_one_on(channel, servers, 1)
                    while (seen := await whoami(channel))[0] != "s1":
                        pass
                    connection = seen[1]
                await until(lambda: draining(channel, servers[1].address))
                before = channel.statistics().subchannels[servers[1].address]
                async with Registrar(client, service, servers[1].address, ttl=5):
                    await until(
                        lambda: not channel.statistics().subchannels[servers[1].address].draining
                    )
                    # The same subchannel: it still counts the held call and its picks, and
                    # new calls share its connection.
                    after = channel.statistics().subchannels[servers[1].address]
                    assert (after.in_flight, after.picks) == (1, before.picks)
                    while (seen := await whoami(channel))[0] != "s1":
                        pass
                    assert seen[1] == connection
                    for server in servers:
                        server.release.set()
                    assert await held == b"s1:h"


async def test_close_grace_then_cancels(client: EtcdClient, service: str) -> None:
    async with echo_servers(1) as [server], registered(client, service, [server]):
        channel, stuck = await resolve_holding(client, service, server)
        with anyio.fail_after(10):
            await channel.close(grace=0.2)
        assert stuck.cancelled() and await stuck.code() is grpc.StatusCode.CANCELLED
        await until(lambda: server.cancelled == 1)


async def test_wait_for_state_change_follows_the_endpoints(
    client: EtcdClient, service: str
) -> None:
    states: list[grpc.ChannelConnectivity] = []
    channel = await resolve(client, service)

    async def follow() -> None:
        state = channel.get_state()
        states.append(state)
        while state is not grpc.ChannelConnectivity.SHUTDOWN:
            await channel.wait_for_state_change(state)
            state = channel.get_state()
            states.append(state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await until(lambda: states == [grpc.ChannelConnectivity.IDLE])
        channel.get_state(try_to_connect=True)
        await until(lambda: states[-1] is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        async with echo_servers(1) as [server], registered(client, service, [server]):
            await until(lambda: states[-1] is grpc.ChannelConnectivity.READY)
            await channel.close()
    assert states[:2] == [grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE]
    assert states[-2:] == [grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN]
    assert set(states[2:-2]) <= {grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING}


async def test_pick_first_follows_key_order_and_fails_over(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    async with echo_servers(3) as servers:
        # Key order differs from the servers' order: s2 comes first.
        for key, server in zip("abc", [servers[2], servers[0], servers[1]], strict=True):
            await em.add_endpoint(f"{service}/{key}", Endpoint(server.address))
        async with await resolve(client, service, policy="pick_first") as channel:
            await ready(channel, 3)
            assert where([await call(channel) for _ in range(10)]) == {"s2": 10}
            await servers[2].stop(None)
            await until(
                lambda: channel.statistics().subchannels[servers[2].address].state != "READY"
            )
            assert where([await call(channel) for _ in range(10)]) == {"s0": 10}
            await em.delete_endpoint(f"{service}/b")
            await until(
                lambda: (
                    servers[0].address not in channel.statistics().subchannels
                    or channel.statistics().subchannels[servers[0].address].draining
                )
            )
            assert where([await call(channel) for _ in range(10)]) == {"s1": 10}


class DeadlineServer:
    """Answers ``Unary`` after failing the first ``fail_first`` attempts with UNAVAILABLE (and
    a pushback of 300 ms: the retry waits that long exactly), and records the time each attempt
    had left (its deadline, as the server saw it)."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.remaining: list[float | None] = []
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        handler = grpc.unary_unary_rpc_method_handler(self._unary)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Unary": handler}),)
        )

    async def _unary(self, request: bytes, context: Any) -> bytes:
        self.remaining.append(context.time_remaining())
        if len(self.remaining) <= self.fail_first:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", "300"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return request


async def test_the_method_config_timeout_is_one_deadline_across_attempts(
    client: EtcdClient, service: str
) -> None:
    config = {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "timeout": "5s",
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    options = [("grpc.service_config", json.dumps(config))]
    backend = DeadlineServer(fail_first=2)
    await backend.server.start()
    try:
        async with (
            Registrar(client, service, backend.address, ttl=5),
            await resolve(client, service, options=options) as channel,
        ):
            assert await channel.unary_unary(method("Unary"))(b"x") == b"x"
            first, second, third = backend.remaining
            # Each attempt gets what is left of the one deadline, not 5 s of its own: 300 ms
            # less each time (grpc rounds the deadline it sends by a few milliseconds).
            assert first is not None and second is not None and third is not None
            assert 4.5 < first < 5.1
            assert first - second > 0.25 and second - third > 0.25
            # A shorter timeout of the call's own wins over the method config's.
            backend.remaining.clear()
            backend.fail_first = 0
            assert await channel.unary_unary(method("Unary"))(b"y", timeout=1) == b"y"
            # (grpc rounds the deadline it sends up: a little over 1 s, far below 5.)
            assert backend.remaining[0] is not None and backend.remaining[0] < 2
    finally:
        await backend.server.stop(None)

"""The channel's connectivity as grpc.aio's: closed-channel errors, IDLE, idle timeout.

Each scenario runs on a native ``grpc.aio`` channel (round_robin over ``ipv4:a,b,c``, the same
servers) and on :func:`resolve`'s channel, and compares what the caller sees: the states through
``get_state()``/``wait_for_state_change()`` and the exceptions raised (type and message), as
gRPC's own ``connectivity_test`` does for grpc.aio.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    MassRemovalProtection,
    Update,
    resolve,
)
from aiodiscovery.testing import TcpProxy

from .faulty_servers import faulty_servers
from .faulty_servers import registered as faulty_registered
from .helpers import until
from .servers import EchoServer, method
from .test_pool import echo_servers, registered

pytestmark = pytest.mark.anyio

_State = grpc.ChannelConnectivity


def native(servers: Sequence[EchoServer], options: Sequence[tuple[str, Any]] = ()) -> Any:
    """grpc.aio's own round_robin channel over the same servers."""
    target = "ipv4:" + ",".join(s.address for s in servers)
    return grpc.aio.insecure_channel(
        target, options=[("grpc.lb_policy_name", "round_robin"), *options]
    )


async def outcome(action: Callable[[], Awaitable[object]]) -> tuple[str, str]:
    """What ``action`` did, bounded in time: ("returned", repr) or (exception type, message)."""
    try:
        with anyio.fail_after(5):
            return "returned", repr(await action())
    except TimeoutError:
        return "hung", ""
    except Exception as exc:
        return type(exc).__name__, str(exc)


async def after_close(channel: Any) -> list[tuple[str, tuple[str, str]]]:
    """Everything a caller may do with a closed channel, and what came of it."""
    await channel.close()
    seen: list[tuple[str, tuple[str, str]]] = [("state", ("returned", repr(channel.get_state())))]
    seen.append(("state(True)", ("returned", repr(channel.get_state(try_to_connect=True)))))
    for last in (_State.IDLE, _State.READY, _State.SHUTDOWN):
        seen.append(
            (
                f"wait_for_state_change({last.name})",
                await outcome(lambda last=last: channel.wait_for_state_change(last)),
            )
        )
    seen.append(("channel_ready", await outcome(channel.channel_ready)))

    async def unary() -> object:
        return await channel.unary_unary(method("Unary"))(b"x")

    async def unary_stream() -> object:
        return [r async for r in channel.unary_stream(method("Count"))(b"1")]

    async def stream_unary() -> object:
        return await channel.stream_unary(method("Join"))()

    async def stream_stream() -> object:
        return [r async for r in channel.stream_stream(method("Chat"))()]

    for call in (unary, unary_stream, stream_unary, stream_stream):
        seen.append((call.__name__, await outcome(call)))
    seen.append(("close again", await outcome(channel.close)))
    return seen


async def test_a_closed_channel_answers_as_grpc_aio_does(client: EtcdClient, service: str) -> None:
    async with echo_servers(2) as servers, registered(client, service, servers):
        theirs = native(servers)
        assert await theirs.unary_unary(method("Unary"))(b"x")
        ours = await resolve(client, service)
        assert await ours.unary_unary(method("Unary"))(b"x")
        expected = await after_close(theirs)
        # Sanity: the model raises what its connectivity_test says it raises.
        assert ("channel_ready", ("UsageError", "Channel is closed.")) in expected
        assert await after_close(ours) == expected


async def test_waiting_on_a_channel_while_it_closes(client: EtcdClient, service: str) -> None:
    """A wait for a state change returns (SHUTDOWN is a change); channel_ready() raises."""

    async def scenario(channel: Any) -> list[tuple[str, str]]:
        state = channel.get_state()
        results: dict[str, tuple[str, str]] = {}

        async def record(name: str, action: Callable[[], Awaitable[object]]) -> None:
            results[name] = await outcome(action)

        async with anyio.create_task_group() as tg:
            tg.start_soon(record, "change", lambda: channel.wait_for_state_change(state))
            tg.start_soon(record, "ready", channel.channel_ready)
            # Both waits are parked: the channel has no server to be READY with.
            await anyio.wait_all_tasks_blocked()
            await channel.close()
        return [results["change"], results["ready"], ("state", repr(channel.get_state()))]

    # Nothing listens on a port of a stopped server: the channels stay in their connect attempts.
    async with echo_servers(1) as [gone]:
        pass
    async with registered(client, service, [gone]):
        expected = await scenario(native([gone]))
        assert expected[1] == ("UsageError", "Channel is closed.")
        assert await scenario(await resolve(client, service)) == expected


class Timeline:
    """Every state a channel goes through, as ``wait_for_state_change`` reports them, with the
    test's own steps in between."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.seen: list[str] = [channel.get_state().name]

    async def follow(self) -> None:
        state = self.channel.get_state()
        while state is not _State.SHUTDOWN:
            with contextlib.suppress(grpc.aio.UsageError):
                await self.channel.wait_for_state_change(state)
            state = self.channel.get_state()
            self.seen.append(state.name)

    def mark(self, step: str) -> None:
        self.seen.append(f"<{step}>")

    async def reaches(self, state: grpc.ChannelConnectivity) -> None:
        await until(lambda: self.seen[-1] == state.name)


async def idle_scenario(
    channel: Any, proxies: Sequence[TcpProxy], direct: Sequence[EchoServer]
) -> list[object]:
    """IDLE until the first call, connected to every endpoint after it, IDLE again after the
    idle timeout, connected again by the next call. Returns what was seen."""
    timeline = Timeline(channel)
    unary = channel.unary_unary(method("Unary"))
    seen: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(timeline.follow)
        # As long as a connection takes: a call of its own, on a channel of its own.
        async with grpc.aio.insecure_channel(direct[0].address) as other:
            assert await other.unary_unary(method("Unary"))(b"x")
        seen.append(("connections before a call", sum(p.connections for p in proxies)))
        timeline.mark("call")
        assert await unary(b"x")
        await timeline.reaches(_State.READY)
        # round_robin connects to every endpoint, not only the one the call went to.
        await until(lambda: sum(p.open_connections for p in proxies) == len(proxies))
        seen.append(("connections after it", sum(p.connections for p in proxies)))
        await timeline.reaches(_State.IDLE)
        await until(lambda: sum(p.open_connections for p in proxies) == 0)
        seen.append(("open once IDLE", 0))
        timeline.mark("call")
        assert await unary(b"x")
        await timeline.reaches(_State.READY)
        await until(lambda: sum(p.open_connections for p in proxies) == len(proxies))
        await channel.close()
    seen.append(("states", timeline.seen))
    return seen


@contextlib.asynccontextmanager
async def proxied(servers: Sequence[EchoServer]) -> AsyncIterator[list[TcpProxy]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(TcpProxy(s.port)) for s in servers]


async def test_idle_until_a_call_and_after_the_idle_timeout_as_grpc(
    client: EtcdClient, service: str
) -> None:
    short = [("grpc.client_idle_timeout_ms", 300)]
    async with echo_servers(3) as servers:
        async with proxied(servers) as proxies:
            addresses = ",".join(f"127.0.0.1:{p.port}" for p in proxies)
            theirs = grpc.aio.insecure_channel(
                f"ipv4:{addresses}", options=[("grpc.lb_policy_name", "round_robin"), *short]
            )
            expected = await idle_scenario(theirs, proxies, servers)
        assert expected == [
            ("connections before a call", 0),
            ("connections after it", 3),
            ("open once IDLE", 0),
            (
                "states",
                [
                    "IDLE",
                    "<call>",
                    "CONNECTING",
                    "READY",
                    "IDLE",
                    "<call>",
                    "CONNECTING",
                    "READY",
                    "SHUTDOWN",
                ],
            ),
        ]
        async with proxied(servers) as proxies:
            em = EndpointManager(client, service)
            for i, proxy in enumerate(proxies):
                await em.add_endpoint(f"{service}/{i}", Endpoint(f"127.0.0.1:{proxy.port}"))
            ours = await resolve(client, service, options=short)
            assert await idle_scenario(ours, proxies, servers) == expected


async def test_get_state_true_connects_and_eager_connects_at_once(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(2) as servers, proxied(servers) as proxies:
        em = EndpointManager(client, service)
        for i, proxy in enumerate(proxies):
            await em.add_endpoint(f"{service}/{i}", Endpoint(f"127.0.0.1:{proxy.port}"))
        async with await resolve(client, service) as lazy:
            assert lazy.get_state() is _State.IDLE
            assert lazy.statistics().by_state() == {"IDLE": 2}
            assert lazy.get_state(try_to_connect=True) is _State.IDLE
            await until(lambda: lazy.get_state() is _State.READY)
            await until(lambda: sum(p.open_connections for p in proxies) == 2)
        await until(lambda: sum(p.open_connections for p in proxies) == 0)
        async with await resolve(client, service, eager=True) as eager:
            await until(lambda: eager.statistics().by_state() == {"READY": 2})
            assert sum(p.open_connections for p in proxies) == 2
            assert eager.get_state() is _State.READY
            assert sum(s.calls for s in servers) == 0
        # eager=True keeps its connections unless an idle timeout is given.
        async with await resolve(
            client, service, eager=True, options=[("grpc.client_idle_timeout_ms", 100)]
        ) as eager:
            await until(lambda: eager.get_state() is _State.READY)
            await until(lambda: eager.get_state() is _State.IDLE)
            await until(lambda: sum(p.open_connections for p in proxies) == 0)


@pytest.mark.parametrize("value", [-1, "300", 1.5, True])
async def test_a_bad_idle_timeout_is_refused(
    client: EtcdClient, service: str, value: object
) -> None:
    with pytest.raises(ValueError, match=r"grpc\.client_idle_timeout_ms must be a whole number"):
        await resolve(client, service, options=[("grpc.client_idle_timeout_ms", value)])


async def test_going_idle_ends_health_watches_and_the_next_call_waits_for_an_answer(
    client: EtcdClient, service: str
) -> None:
    short = [("grpc.client_idle_timeout_ms", 200)]
    async with faulty_servers(2) as servers, faulty_registered(client, service, servers):
        async with await resolve(client, service, health_check="", options=short) as channel:
            assert channel.statistics().by_health() == {"PENDING": 2}
            assert await channel.unary_unary(method("Unary"))(b"x")
            await until(lambda: [s.watchers() for s in servers] == [1, 1])
            await until(lambda: channel.get_state() is _State.IDLE)
            # Every connection closed, the health streams with them; no verdict is kept.
            await until(lambda: [s.watchers() for s in servers] == [0, 0])
            assert channel.statistics().by_health() == {"PENDING": 2}
            assert channel.statistics().by_state() == {"IDLE": 2}
            # A call made now waits for the first SERVING, as at start.
            assert await channel.unary_unary(method("Unary"))(b"y", timeout=10)
            assert channel.get_state() is _State.READY


async def test_the_channel_stays_connected_while_mass_removal_protection_keeps_endpoints(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    em = EndpointManager(client, service)
    protection = MassRemovalProtection(grace=1.0)
    short = [("grpc.client_idle_timeout_ms", 100)]
    async with echo_servers(2) as servers:
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        channel = await resolve(client, service, mass_removal=protection, options=short)
        async with channel:
            with caplog.at_level(logging.INFO, logger="aiodiscovery.pool"):
                assert await channel.unary_unary(method("Unary"))(b"x")
                await until(lambda: channel.statistics().by_state() == {"READY": 2})
                await em.update([Update.delete(f"{service}/{s.name}") for s in servers])
                await until(lambda: channel.statistics().mass_removals == 1)
                # Once protection ends, nothing holds the channel connected any more.
                await until(
                    lambda: any(
                        "IDLE, connections closed" in r.getMessage() for r in caplog.records
                    )
                )
            messages = [r.getMessage() for r in caplog.records]
            ended = next(i for i, m in enumerate(messages) if "protection ends" in m)
            idle = [i for i, m in enumerate(messages) if ": IDLE, connections closed" in m]
            # Many idle timeouts passed while the endpoints were kept: none closed them.
            assert idle and all(i > ended for i in idle), messages

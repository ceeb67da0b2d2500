"""The channel's connectivity as grpc.aio's: closed-channel errors, IDLE, idle timeout.

Each scenario runs on a native ``grpc.aio`` channel (round_robin over ``ipv4:a,b,c``, the same
servers) and on :func:`resolve`'s channel, and compares what the caller sees: the states through
``get_state()``/``wait_for_state_change()`` and the exceptions raised (type and message), as
gRPC's own ``connectivity_test`` does for grpc.aio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import EtcdClient, resolve

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

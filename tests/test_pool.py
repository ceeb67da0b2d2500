"""resolve() and BalancedChannel with real etcd and real grpc.aio servers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    BalancedChannel,
    Endpoint,
    EndpointManager,
    EtcdClient,
    Picker,
    Registrar,
    SubchannelView,
    WeightedPicker,
    resolve,
)
from aiodiscovery._balancer.policies import MAX_WEIGHT

from .helpers import until
from .servers import EchoServer, method

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[EchoServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EchoServer(f"s{i}")) for i in range(count)]


@contextlib.asynccontextmanager
async def registered(
    client: EtcdClient, service: str, servers: Sequence[EchoServer], weights: Sequence[int] = ()
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for i, server in enumerate(servers):
            # The Go-safe string form: object metadata crashes grpc-go clients.
            metadata = (
                Endpoint.with_attributes(server.address, weight=weights[i]).metadata
                if weights
                else None
            )
            await stack.enter_async_context(
                Registrar(client, service, server.address, metadata=metadata, ttl=5)
            )
        yield


async def ready(channel: BalancedChannel, count: int, timeout: float = 10) -> None:
    """Connect the channel (it starts IDLE) and wait until ``count`` subchannels are READY."""
    channel.get_state(try_to_connect=True)
    await until(lambda: channel.statistics().by_state().get("READY", 0) == count, timeout)


async def call(channel: grpc.aio.Channel, payload: bytes = b"x", **kwargs: Any) -> bytes:
    return await channel.unary_unary(method("Unary"))(payload, **kwargs)  # type: ignore[no-any-return]


async def resolve_holding(
    client: EtcdClient, service: str, server: EchoServer
) -> tuple[BalancedChannel, Any]:
    """A channel over ``server`` alone, with one Hold call held on it."""
    channel = await resolve(client, service)
    await ready(channel, 1)
    held = channel.unary_unary(method("Hold"))(b"h")
    await until(lambda: server.holding == 1)
    return channel, held


def where(replies: list[bytes]) -> Counter[str]:
    return Counter(r.split(b":", 1)[0].decode() for r in replies)


async def test_round_robin_spreads_evenly(client: EtcdClient, service: str) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, f"etcd:///{service}") as channel:
            await ready(channel, 3)
            replies = [await call(channel) for _ in range(300)]
            assert where(replies) == {"s0": 100, "s1": 100, "s2": 100}
            stats = channel.statistics()
            assert stats.picks == 300 and stats.in_flight == 0
            assert {s.picks for s in stats.subchannels.values()} == {100}
            assert "READY=3" in repr(channel)


async def test_pick_first_sticks_to_one(client: EtcdClient, service: str) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service, policy="pick_first") as channel:
            await ready(channel, 3)
            assert len(where([await call(channel) for _ in range(30)])) == 1


async def test_weighted_follows_metadata_weights(client: EtcdClient, service: str) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers, weights=[1, 2, 3]):
        async with await resolve(client, service, policy="weighted") as channel:
            await ready(channel, 3)
            replies = [await call(channel) for _ in range(600)]
            assert where(replies) == {"s0": 100, "s1": 200, "s2": 300}


async def test_p2c_avoids_the_loaded_endpoint(client: EtcdClient, service: str) -> None:
    async with echo_servers(2) as servers, registered(client, service, servers[:1]):
        async with await resolve(client, service, policy="p2c") as channel:
            await ready(channel, 1)
            # Load s0 alone, before s1 exists, so that which server is loaded is not left to luck.
            held = [channel.unary_unary(method("Hold"))(b"h") for _ in range(5)]
            await until(lambda: servers[0].holding == 5)
            async with Registrar(client, service, servers[1].address, ttl=5):
                await ready(channel, 2)
                # With two subchannels p2c compares both: every quick call avoids the loaded
                # one. A random pick would send each to s0 half the time.
                assert where([await call(channel) for _ in range(20)]) == {"s1": 20}
                servers[0].release.set()
                assert where(await asyncio.gather(*held)) == {"s0": 5}
                spread = where([await call(channel) for _ in range(200)])
                assert set(spread) == {"s0", "s1"}


async def test_weight_change_is_honoured(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    async with echo_servers(2) as servers:
        for server in servers:
            await em.add_endpoint(
                f"{service}/{server.name}", Endpoint.with_attributes(server.address, weight=1)
            )
        async with await resolve(client, service, policy="weighted") as channel:
            await ready(channel, 2)
            assert where([await call(channel) for _ in range(100)]) == {"s0": 50, "s1": 50}
            # Same address, new metadata: the subchannel list does not change, the weight does.
            key = f"{service}/s1"
            # The legacy object form still counts (a Python-only fleet may use it).
            await em.add_endpoint(key, Endpoint(servers[1].address, {"weight": 9}))
            revision = (await client.get(key.encode())).mod_revision
            await until(lambda: channel.statistics().revision >= revision)
            assert where([await call(channel) for _ in range(100)]) == {"s0": 10, "s1": 90}


@dataclass
class View:
    address: str
    metadata: object
    state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.READY
    in_flight: int = 0


def test_bad_weight_is_reported_once_per_address_and_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    picker = WeightedPicker()
    good, bad = View("a:1", {"weight": 2}), View("b:1", {"weight": "heavy"})
    with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
        # As on connectivity flaps: the same list over and over.
        for _ in range(3):
            picker.update([good, bad])
            picker.update([good])
        assert [r.getMessage() for r in caplog.records] == [
            "endpoint b:1: weight 'heavy' is not a whole number from 1 to 4294967295; using 1"
        ]
        assert Counter(picker.pick().address for _ in range(30)) == {"a:1": 30}
        picker.update([good, bad])
        assert Counter(picker.pick().address for _ in range(30)) == {"a:1": 20, "b:1": 10}
        bad.metadata = {"weight": 0}
        picker.update([good, bad])
        picker.update([good, bad])
        assert len(caplog.records) == 2 and "weight '0'" in caplog.records[1].getMessage()


def test_weights_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    picker = WeightedPicker()
    small = View("b:1", {"weight": 1})
    with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
        picker.update([View("a:1", {"weight": 10**9}), small])
        picks = Counter(picker.pick().address for _ in range(MAX_WEIGHT + 1))
        assert picks == {"a:1": MAX_WEIGHT, "b:1": 1}
        # Whatever the registry holds, update() and pick() neither fail nor take long.
        for weight in (float("nan"), float("inf"), 10**5000, 1e308, [[[[[[[[1]]]]]]]], "x\ny"):
            picker.update([View("c\nforged:1", {"weight": weight}), small])
            assert picker.pick().address in {"c\nforged:1", "b:1"}
    messages = [r.getMessage() for r in caplog.records]
    # NaN, infinities, huge integers and lists are no weight at all (not even in Go), so only
    # the huge weight, 1e308 and the text are reported.
    assert len(messages) == 3
    assert all("\n" not in m for m in messages)
    assert "weight 1000000000 is more than 10000; using 10000" in messages[0]


async def test_custom_picker(client: EtcdClient, service: str) -> None:
    class Last(Picker):
        def update(self, subchannels: Sequence[SubchannelView]) -> None:
            self.last = max(subchannels, key=lambda s: s.address)

        def pick(self) -> SubchannelView:
            return self.last

    async with echo_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, policy=Last) as channel:
            await ready(channel, 2)
            highest = max(servers, key=lambda s: s.address).name
            assert where([await call(channel) for _ in range(10)]) == {highest: 10}
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        await resolve(client, service, policy="nope")


async def test_added_server_takes_calls_and_removed_one_drains(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers[:2]):
        async with await resolve(client, service) as channel:
            await ready(channel, 2)
            async with Registrar(client, service, servers[2].address, ttl=5):
                await ready(channel, 3)
                assert set(where([await call(channel) for _ in range(30)])) == {"s0", "s1", "s2"}
                # A call held on s2 must survive s2's deregistration.
                held: list[Any] = []
                while not servers[2].holding:
                    held.append(channel.unary_unary(method("Hold"))(b"h"))
                    expected = len(held)
                    await until(lambda n=expected: sum(s.holding for s in servers) == n)
            await until(
                lambda: (
                    channel.statistics().subchannels.get(servers[2].address) is None
                    or channel.statistics().subchannels[servers[2].address].draining
                )
            )
            before = servers[2].calls
            assert set(where([await call(channel) for _ in range(30)])) == {"s0", "s1"}
            assert servers[2].calls == before, "a draining endpoint takes no new calls"
            for server in servers:
                server.release.set()
            assert all(r.endswith(b":h") for r in await asyncio.gather(*held))
            await until(lambda: servers[2].address not in channel.statistics().subchannels)


def drained(channel: BalancedChannel, address: str) -> bool:
    sub = channel.statistics().subchannels.get(address)
    return sub is None or (sub.draining and sub.in_flight == 0)


@dataclass
class Load:
    """What the workers of :func:`under_load` got."""

    replies: list[bytes] = field(default_factory=list)
    failures: list[grpc.aio.AioRpcError] = field(default_factory=list)

    async def more(self, count: int) -> None:
        """Wait until ``count`` more calls have succeeded."""
        target = len(self.replies) + count
        await until(lambda: len(self.replies) >= target)


@contextlib.asynccontextmanager
async def under_load(channel: grpc.aio.Channel, workers: int = 8) -> AsyncIterator[Load]:
    """Workers calling ``channel`` back to back for as long as the block runs."""
    load = Load()
    stop = anyio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                load.replies.append(await call(channel, timeout=5))
            except grpc.aio.AioRpcError as exc:
                load.failures.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
        try:
            yield load
        finally:
            stop.set()


async def test_deregistration_under_load_fails_no_call(client: EtcdClient, service: str) -> None:
    async with echo_servers(3) as servers, registered(client, service, servers[:2]):
        async with await resolve(client, service) as channel, under_load(channel) as load:
            async with Registrar(client, service, servers[2].address, ttl=5):
                await ready(channel, 3)
                await until(lambda: servers[2].calls > 50)
            # The lease is revoked: s2 drains while eight workers keep calling.
            await until(lambda: drained(channel, servers[2].address))
            assert channel.statistics().mass_removals == 0
            frozen = servers[2].calls
            await load.more(300)
        assert servers[2].calls == frozen, "no call reached s2 once it was drained"
    assert load.failures == []
    assert set(where(load.replies)) == {"s0", "s1", "s2"}


async def test_server_stopped_without_deregistering(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    failures: list[grpc.aio.AioRpcError] = []
    replies: list[bytes] = []
    concurrency = 4
    async with echo_servers(3) as servers:
        for server in servers:
            await em.add_endpoint(f"{service}/{server.name}", Endpoint(server.address))
        async with await resolve(client, service) as channel:
            await ready(channel, 3)

            async def worker(count: int) -> None:
                for _ in range(count):
                    try:
                        replies.append(await call(channel, timeout=5))
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker, 150)
                await until(lambda: servers[1].calls > 20)
                await servers[1].stop(None)
            await until(lambda: channel.statistics().by_state().get("READY") == 2)
            after = where([await call(channel) for _ in range(40)])
    assert set(after) == {"s0", "s2"}
    # Each worker can lose the call it had in flight on s1 at the crash, and the next one if it
    # was picked for s1 before the pool saw s1 leave READY: grpc reports a call's failure and
    # the channel's connectivity change separately, so the pool learns of the crash a little
    # after the calls do. Round robin gives s1 one pick in three, so a third loss per worker in
    # that short window would mean the pool kept picking a dead endpoint.
    assert len(failures) <= 2 * concurrency, [(f.code(), f.details()) for f in failures]
    # A server stopping without grace cancels its calls: the client sees UNAVAILABLE, or
    # INTERNAL/CANCELLED for a call cut mid-stream, exactly as on a plain channel.
    assert {f.code() for f in failures} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }, [(f.code(), f.details()) for f in failures]
    assert len(replies) + len(failures) == concurrency * 150


async def call_kinds(channel: grpc.aio.Channel, server: EchoServer) -> dict[str, Any]:
    """Exercise every call type and feature on ``channel`` (whose calls reach ``server``)."""
    results: dict[str, Any] = {}
    results["unary"] = await channel.unary_unary(method("Unary"))(b"u")
    results["stream"] = [r async for r in channel.unary_stream(method("Count"))(b"3")]
    stream_call = channel.unary_stream(method("Count"))(b"2")
    results["read"] = [await stream_call.read(), await stream_call.read()]
    results["eof"] = await stream_call.read() is grpc.aio.EOF

    async def requests() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    results["join"] = await channel.stream_unary(method("Join"))(requests())
    chat = channel.stream_stream(method("Chat"))()
    await chat.write(b"hi")
    first = await chat.read()
    await chat.write(b"yo")
    second = await chat.read()
    await chat.done_writing()
    results["chat"] = [first, second, await chat.read() is grpc.aio.EOF]
    meta_call = channel.unary_unary(method("Meta"))(b"", metadata=(("x-test", "v1"),))
    results["meta"] = await meta_call
    results["trailing"] = dict(await meta_call.trailing_metadata()).get("x-echo")
    results["code"] = await meta_call.code()
    with pytest.raises(grpc.aio.AioRpcError) as deadline:
        await channel.unary_unary(method("Hold"))(b"d", timeout=0.2)
    results["deadline"] = deadline.value.code()
    # The server drops the expired call on its own time: count only the next one.
    await until(lambda: server.holding == 0)
    held = channel.unary_unary(method("Hold"))(b"c")
    await until(lambda: server.holding == 1)
    results["cancel"] = held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    results["cancelled"] = (held.cancelled(), held.done())
    return results


async def test_every_call_type_behaves_as_on_a_plain_channel(
    client: EtcdClient, service: str
) -> None:
    async with echo_servers(1) as [server], registered(client, service, [server]):
        async with grpc.aio.insecure_channel(server.address) as plain:
            expected = await call_kinds(plain, server)
        async with await resolve(client, service) as channel:
            assert await call_kinds(channel, server) == expected
            await until(lambda: channel.statistics().in_flight == 0)
    assert expected["unary"] == b"s0:u"
    assert expected["stream"] == [b"s0:0", b"s0:1", b"s0:2"]
    assert expected["join"] == b"s0:a+b+c"
    assert expected["chat"] == [b"s0:hi", b"s0:yo", True]
    assert (expected["meta"], expected["trailing"]) == (b"s0:v1", "v1")
    assert expected["deadline"] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert expected["cancelled"] == (True, True)


async def test_no_endpoint_fails_fast_or_waits_for_ready(client: EtcdClient, service: str) -> None:
    async with await resolve(client, service) as channel:
        # IDLE, as an unconnected grpc channel; connecting finds nothing to connect to.
        assert channel.get_state() is grpc.ChannelConnectivity.IDLE
        assert channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(channel)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert service in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await call(channel, timeout=0.2, wait_for_ready=True)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert channel.statistics().no_endpoint_failures == 1

        waiting = channel.unary_unary(method("Unary"))(b"w", timeout=10, wait_for_ready=True)
        assert not waiting.done() and waiting.time_remaining() > 5
        async with echo_servers(1) as [server], registered(client, service, [server]):
            assert await waiting == b"s0:w"
            assert await waiting.code() is grpc.StatusCode.OK
            with anyio.fail_after(10):
                await channel.channel_ready()
            assert channel.get_state() is grpc.ChannelConnectivity.READY
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        await call(channel)


async def test_a_call_that_fails_at_once_still_yields(client: EtcdClient, service: str) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with await resolve(client, service) as channel, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        # A caller that retries in a loop: without a checkpoint per call it would never let
        # anything else run (the whole application would hang while the service is empty).
        for _ in range(50):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(channel)
        assert ticks - before >= 25
        tg.cancel_scope.cancel()


async def test_calls_have_the_types_of_grpc_aio(client: EtcdClient, service: str) -> None:
    kinds = [
        ("unary_unary", grpc.aio.UnaryUnaryMultiCallable, grpc.aio.UnaryUnaryCall),
        ("unary_stream", grpc.aio.UnaryStreamMultiCallable, grpc.aio.UnaryStreamCall),
        ("stream_unary", grpc.aio.StreamUnaryMultiCallable, grpc.aio.StreamUnaryCall),
        ("stream_stream", grpc.aio.StreamStreamMultiCallable, grpc.aio.StreamStreamCall),
    ]
    async with await resolve(client, service) as channel:
        for kind, multi_callable_type, call_type in kinds:
            multi_callable = getattr(channel, kind)(method("Unary"))
            assert isinstance(multi_callable, multi_callable_type)
            # With no endpoint the call waits, in an object of the same kind as grpc.aio's.
            waiting = multi_callable(None, wait_for_ready=True, timeout=30)
            assert isinstance(waiting, call_type), kind
            assert waiting.cancel()


def waiting_call(channel: grpc.aio.Channel, **kwargs: Any) -> tuple[Any, list[Any]]:
    """A unary call that waits for an endpoint, and the list its done callback appends to."""
    pending = channel.unary_unary(method("Unary"))(b"w", wait_for_ready=True, **kwargs)
    ended: list[Any] = []
    pending.add_done_callback(ended.append)
    return pending, ended


async def outcome(awaitable: Awaitable[Any]) -> Any:
    """What ``awaitable`` returns, or the error or cancellation it raises."""
    try:
        return await awaitable
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
        return exc


async def test_cancel_stops_a_waiting_call(client: EtcdClient, service: str) -> None:
    async with await resolve(client, service) as channel:
        pending, ended = waiting_call(channel, timeout=30)
        results: list[Any] = []

        async def waiter() -> None:
            results.append("waiting")
            results.append(await outcome(pending))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await until(lambda: results == ["waiting"])
            assert not pending.done() and not pending.cancelled()
            assert pending.cancel()
            assert pending.done() and pending.cancelled()
            assert ended == [pending]
        # As grpc.aio does for a call stopped with cancel().
        assert isinstance(results[1], asyncio.CancelledError)
        assert not pending.cancel()
        assert await pending.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await pending
        late: list[Any] = []
        pending.add_done_callback(late.append)
        assert late == [pending] and ended == [pending]

        async with echo_servers(1) as [server], registered(client, service, [server]):
            await ready(channel, 1)
            assert await call(channel) == b"s0:x"
            # One pick, one call: the cancelled call was never sent.
            assert channel.statistics().picks == 1 and server.calls == 1


async def test_close_fails_waiting_calls(client: EtcdClient, service: str) -> None:
    channel = await resolve(client, service)
    awaited, awaited_ended = waiting_call(channel)
    unawaited, unawaited_ended = waiting_call(channel, timeout=30)
    results: list[Any] = []

    async def waiter() -> None:
        results.append("waiting")
        results.append(await outcome(awaited))

    # A waiting call that close() forgot would hang its awaiter, and this task group, for good.
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await until(lambda: results == ["waiting"])
            await channel.close()
    error = results[1]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert (error.code(), error.details()) == (grpc.StatusCode.CANCELLED, "channel closed")
    for pending, ended in ((awaited, awaited_ended), (unawaited, unawaited_ended)):
        assert pending.done() and ended == [pending]
        assert await pending.code() is grpc.StatusCode.CANCELLED
        assert await pending.details() == "channel closed"
        assert not pending.cancel()
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_a_waiting_call_outlives_an_abandoned_await(client: EtcdClient, service: str) -> None:
    async with await resolve(client, service) as channel:
        pending, ended = waiting_call(channel, timeout=30)
        results: dict[str, Any] = {}
        scopes: dict[str, anyio.CancelScope] = {}

        async def wait(name: str, awaitable: Awaitable[Any]) -> None:
            with anyio.CancelScope() as scopes[name]:
                results[name] = "waiting"
                results[name] = await outcome(awaitable)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "first", pending)
            tg.start_soon(wait, "code", pending.code())
            tg.start_soon(wait, "reply", pending)
            await until(lambda: len(results) == 3)
            # The first awaiter gives up (its own timeout, say): the call goes on for the others.
            scopes["first"].cancel()
            await until(lambda: results["first"] != "waiting")
            assert not pending.done() and ended == []
            async with echo_servers(1) as [server], registered(client, service, [server]):
                await until(lambda: results["reply"] != "waiting")
                assert server.calls == 1
        assert isinstance(results["first"], asyncio.CancelledError)
        assert results["code"] is grpc.StatusCode.OK
        assert results["reply"] == b"s0:w"
        assert pending.done() and not pending.cancelled() and ended == [pending]


async def test_a_deadline_ends_a_waiting_call_nobody_awaits(
    client: EtcdClient, service: str
) -> None:
    async with await resolve(client, service) as channel:
        pending, ended = waiting_call(channel, timeout=0.1)
        await until(lambda: ended == [pending])
        assert pending.done() and not pending.cancelled() and pending.time_remaining() == 0
        assert await pending.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pending
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancelled_resolve_leaves_no_task_behind(client: EtcdClient, service: str) -> None:
    before = asyncio.all_tasks()
    cancelled = 0
    # From before the pool's task first runs to well into the watcher's first list.
    for delay in (0, 0.0005, 0.001, 0.002, 0.005):
        with anyio.move_on_after(delay) as scope:
            channel = await resolve(client, service)
            await channel.close()
        cancelled += scope.cancelled_caught
    assert cancelled

    def left() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]

    # grpc's own bookkeeping tasks for the cancelled etcd calls end on their own, soon.
    try:
        await until(lambda: not left(), timeout=5)
    except AssertionError:
        raise AssertionError(f"tasks left behind: {left()}") from None


async def test_a_pool_that_stops_following_etcd_says_so(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Faulty(Picker):
        armed = False

        def update(self, subchannels: Sequence[SubchannelView]) -> None:
            if self.armed:
                raise RuntimeError("picker bug")
            self.subchannels = subchannels

        def pick(self) -> SubchannelView:
            return self.subchannels[0]

    picker = Faulty()
    async with (
        echo_servers(1) as [server],
        await resolve(client, service, policy=lambda: picker) as channel,
    ):
        pending, ended = waiting_call(channel, timeout=30)
        picker.armed = True
        # The new endpoint's update kills the pool's task, as a dead watcher would.
        async with registered(client, service, [server]):
            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await pending
        assert "stopped following etcd" in caplog.text
        for error in (waited.value, await outcome(call(channel, wait_for_ready=True))):
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "stopped following etcd" in error.details() and "picker bug" in error.details()
        assert ended == [pending]
        assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        assert channel.statistics().subchannels == {}
        with pytest.raises(RuntimeError, match="stopped following etcd"):
            await channel.channel_ready()
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_interceptors_reach_every_subchannel(client: EtcdClient, service: str) -> None:
    class AddMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            details = details._replace(metadata=(*(details.metadata or ()), ("x-test", "icpt")))
            return await continuation(details, request)

    async with echo_servers(2) as servers, registered(client, service, servers):
        channel = await resolve(client, service, interceptors=[AddMetadata()])
        try:
            await ready(channel, 2)
            replies = [await channel.unary_unary(method("Meta"))(b"") for _ in range(4)]
            assert sorted(replies) == [b"s0:icpt", b"s0:icpt", b"s1:icpt", b"s1:icpt"]
        finally:
            await channel.close()


async def test_generated_greeter_stub_works_unchanged(
    client: EtcdClient, service: str, tmp_path: Path
) -> None:
    from grpc_tools import protoc  # noqa: PLC0415

    proto = tmp_path / "greet.proto"
    proto.write_text(
        'syntax = "proto3"; package greet;\n'
        "service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }\n"
        "message HelloRequest { string name = 1; }\n"
        "message HelloReply { string message = 1; }\n"
    )
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{tmp_path}",
                f"--python_out={tmp_path}",
                f"--grpc_python_out={tmp_path}",
                str(proto),
            ]
        )
        == 0
    )
    sys.path.insert(0, str(tmp_path))
    try:
        pb2 = importlib.import_module("greet_pb2")
        pb2_grpc = importlib.import_module("greet_pb2_grpc")
    finally:
        sys.path.remove(str(tmp_path))

    class Greeter(pb2_grpc.GreeterServicer):  # type: ignore[misc, name-defined]
        async def SayHello(self, request: Any, context: Any) -> Any:
            return pb2.HelloReply(message=f"Hello, {request.name}")

    server = grpc.aio.server()
    pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with Registrar(client, service, f"127.0.0.1:{port}", ttl=5):
            async with await resolve(client, f"etcd:///{service}") as channel:
                reply = await pb2_grpc.GreeterStub(channel).SayHello(pb2.HelloRequest(name="x"))
                assert reply.message == "Hello, x"
    finally:
        await server.stop(None)

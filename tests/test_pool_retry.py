"""Retries across endpoints from the service config's retryPolicy (gRFC A6), with real servers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import BalancedChannel, EtcdClient, resolve
from aiodiscovery._balancer.policies import Picker
from aiodiscovery._logsafe import Labelled
from aiodiscovery._pool.retrying import RetryingUnaryStreamCall, RetryingUnaryUnaryCall
from aiodiscovery._pool.serviceconfig import channel_rules

from .faulty_servers import FaultyServer, faulty_servers, registered
from .helpers import until
from .servers import method
from .test_pool import ready, where

LOG = Labelled(logging.getLogger("aiodiscovery.pool"), "test")

pytestmark = pytest.mark.anyio

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def retry_policy(
    max_attempts: int = 3,
    codes: tuple[str, ...] = ("UNAVAILABLE",),
    initial: str = "0.01s",
    maximum: str = "0.05s",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "maxAttempts": max_attempts,
        "initialBackoff": initial,
        "maxBackoff": maximum,
        "backoffMultiplier": 2,
        "retryableStatusCodes": list(codes),
        **extra,
    }


def service_config(*method_configs: dict[str, Any], **top: Any) -> list[tuple[str, str]]:
    return [("grpc.service_config", json.dumps({"methodConfig": list(method_configs), **top}))]


def for_echo(policy: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": [{"service": "test.Echo"}], "retryPolicy": policy, **extra}


async def unary(channel: grpc.aio.Channel, payload: bytes = b"x", **kwargs: Any) -> Any:
    return await channel.unary_unary(method("Unary"))(payload, **kwargs)


async def failure(channel: grpc.aio.Channel, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(channel, **kwargs)
    return info.value


def attempts(servers: list[FaultyServer]) -> list[int]:
    return [s.calls for s in servers]


async def in_pick_order(
    channel: grpc.aio.Channel, servers: list[FaultyServer]
) -> tuple[FaultyServer, FaultyServer]:
    """With pick_first over two servers: (the one it sticks to, the other); one call made."""
    [name] = where([await unary(channel)])
    first, other = sorted(servers, key=lambda s: s.name != name)
    first.calls = 0
    return first, other


async def test_a_failed_call_is_retried_on_another_endpoint(
    client: EtcdClient, service: str
) -> None:
    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 3)
            servers[1].fail_with = UNAVAILABLE
            replies = [await unary(channel) for _ in range(30)]
            assert set(where(replies)) == {"s0", "s2"}
            # Every call that went to s1 first was retried once, never on s1 again.
            stats = channel.statistics()
            assert stats.retries == servers[1].calls > 0
            assert servers[0].calls + servers[2].calls == 30
            assert stats.transparent_retries == 0


async def test_the_call_that_wakes_an_idle_channel_is_retried_on_another_endpoint(
    client: EtcdClient, service: str
) -> None:
    options = [
        *service_config(for_echo(retry_policy(max_attempts=2))),
        ("grpc.client_idle_timeout_ms", 300),
    ]
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, policy="pick_first", options=options) as channel:
            first, other = await in_pick_order(channel, servers)
            await until(lambda: channel.get_state() is grpc.ChannelConnectivity.IDLE)
            first.fail_with = UNAVAILABLE
            # The first attempt wakes the channel and goes to pick_first's choice; the retry
            # must know that endpoint was tried, or pick_first chooses it again.
            assert where([await unary(channel)]) == {other.name: 1}
            assert (first.calls, other.calls) == (1, 1)


async def test_attempts_are_not_multiplied_underneath(client: EtcdClient, service: str) -> None:
    options = service_config(for_echo(retry_policy(max_attempts=3)))
    async with faulty_servers(3) as servers, registered(client, service, servers):
        for server in servers:
            server.fail_with = UNAVAILABLE
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 3)
            error = await failure(channel)
            assert error.code() is UNAVAILABLE
            # Three attempts in all, one per endpoint: the subchannels did not retry them again.
            assert attempts(servers) == [1, 1, 1]
        # maxAttempts is capped at 5, and with one endpoint every attempt goes there.
        options = service_config(for_echo(retry_policy(max_attempts=9)))
        async with registered(client, f"{service}-one", servers[:1]):
            async with await resolve(client, f"{service}-one", options=options) as channel:
                await ready(channel, 1)
                await failure(channel)
                assert servers[0].calls == 1 + 5


async def test_only_retryable_codes_are_retried(client: EtcdClient, service: str) -> None:
    options = service_config(for_echo(retry_policy(codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"))))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 2)
            for server in servers:
                server.fail_with = grpc.StatusCode.INTERNAL
            assert (await failure(channel)).code() is grpc.StatusCode.INTERNAL
            assert sum(attempts(servers)) == 1
            for server in servers:
                server.fail_with = grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await failure(channel)).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert sum(attempts(servers)) == 1 + 3


async def test_method_names_select_the_policy(client: EtcdClient, service: str) -> None:
    options = service_config(
        {"name": [{"service": "test.Echo", "method": "Unary"}], "retryPolicy": retry_policy(2)},
        {"name": [{"service": "test.Echo"}], "retryPolicy": retry_policy(4)},
        {"name": [{}], "retryPolicy": retry_policy(3, codes=("UNIMPLEMENTED",))},
    )
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server = servers[0]
        server.fail_with = UNAVAILABLE
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 1)
            await failure(channel)
            assert server.calls == 2
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary(method("Meta"))(b"")
            assert server.calls == 2 + 4
            # Any other service: the default entry (an empty name) applies.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/other.Service/Nope")(b"")
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert channel.statistics().retries == 1 + 3 + 2


async def test_the_deadline_bounds_every_attempt(client: EtcdClient, service: str) -> None:
    slow = retry_policy(max_attempts=5, initial="1s", maximum="1s")
    options = service_config(for_echo(slow))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        for server in servers:
            server.fail_with = UNAVAILABLE
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 2)
            started = time.monotonic()
            error = await failure(channel, timeout=0.3)
            # A retry that could not start before the deadline is not made: the last error.
            assert time.monotonic() - started < 0.5
            assert error.code() in (UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # The method config's timeout is the whole call's deadline, over all its attempts.
        options = service_config(for_echo(slow, timeout="0.4s"))
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 2)
            pending = channel.unary_unary(method("Unary"))(b"x")
            remaining = pending.time_remaining()
            assert remaining is not None and 0.2 < remaining <= 0.4
            longer = channel.unary_unary(method("Unary"))(b"x", timeout=30)
            assert longer.time_remaining() <= 0.4
            for call in (pending, longer):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call


async def test_retries_are_throttled_while_most_calls_fail(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = service_config(
        for_echo(retry_policy(max_attempts=5)),
        retryThrottling={"maxTokens": 10, "tokenRatio": 0.5},
    )
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options, policy="pick_first") as channel:
            await ready(channel, 2)
            assert channel.statistics().retry_tokens == 10
            for server in servers:
                server.fail_with = UNAVAILABLE
            with caplog.at_level(logging.INFO, logger="aiodiscovery"):
                # Each failed attempt takes a token; the fifth leaves 5, which is not > 10/2.
                await failure(channel)
                assert sum(attempts(servers)) == 5
                # Throttled: one attempt per call.
                for _ in range(3):
                    await failure(channel)
                assert sum(attempts(servers)) == 5 + 3
                stats = channel.statistics()
                assert (stats.retries, stats.retries_throttled, stats.retry_tokens) == (4, 4, 2)
                for server in servers:
                    server.fail_with = None
                # Each success gives back half a token.
                replies = [await unary(channel) for _ in range(9)]
                assert channel.statistics().retry_tokens == 6.5
                # pick_first: all went to the first endpoint; failing, it sends the call on.
                [(first, _)] = where(replies).items()
                first_server, other = sorted(servers, key=lambda s: s.name != first)
                first_server.fail_with = UNAVAILABLE
                assert await unary(channel) == f"{other.name}:x".encode()
                assert channel.statistics().retries == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retries throttled" in m for m in messages) == 1
    assert sum("retries resume" in m for m in messages) == 1


async def test_server_pushback(client: EtcdClient, service: str) -> None:
    options = service_config(for_echo(retry_policy(max_attempts=2)))
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server = servers[0]
        server.fail_with = UNAVAILABLE
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 1)
            server.pushback = "-1"
            await failure(channel)
            assert server.calls == 1, "a negative pushback means: do not retry"
            server.pushback = "250"
            started = time.monotonic()
            await failure(channel)
            assert server.calls == 1 + 2
            assert time.monotonic() - started >= 0.25


async def test_an_attempt_whose_server_sent_metadata_is_final(
    client: EtcdClient, service: str
) -> None:
    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server = servers[0]
        server.fail_with = UNAVAILABLE
        server.initial_metadata = (("x-started", "yes"),)
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 1)
            error = await failure(channel)
            assert server.calls == 1
            assert dict(error.initial_metadata() or ())["x-started"] == "yes"


async def test_a_stream_is_retried_only_before_its_first_message(
    client: EtcdClient, service: str
) -> None:
    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options, policy="pick_first") as channel:
            await ready(channel, 2)
            first, other = await in_pick_order(channel, servers)
            count = channel.unary_stream(method("Count"))
            first.fail_with = UNAVAILABLE
            # Fails before any message: the other endpoint answers the whole stream.
            stream = count(b"3")
            assert isinstance(stream, RetryingUnaryStreamCall)
            assert [m async for m in stream] == [f"{other.name}:{i}".encode() for i in range(3)]
            assert await stream.code() is grpc.StatusCode.OK
            # Fails after one message: the caller has it, so the stream is not sent again.
            first.stream_before_failing = 1
            stream = count(b"3")
            assert await stream.read() == f"{first.name}:0".encode()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stream.read()
            assert info.value.code() is UNAVAILABLE
            assert await stream.code() is UNAVAILABLE
            assert (first.calls, other.calls) == (2, 1)
            # Initial metadata commits as well, and wait_for_connection() waits for a live one.
            first.stream_before_failing = 0
            stream = count(b"2")
            await stream.wait_for_connection()
            assert await stream.initial_metadata() == grpc.aio.Metadata()
            assert [m async for m in stream] == [f"{other.name}:{i}".encode() for i in range(2)]


async def test_a_retried_call_behaves_like_a_grpc_aio_call(
    client: EtcdClient, service: str
) -> None:
    options = service_config(for_echo(retry_policy(initial="0.2s", maximum="0.2s")))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options, policy="pick_first") as channel:
            await ready(channel, 2)
            first, other = await in_pick_order(channel, servers)
            first.fail_with = UNAVAILABLE
            meta = channel.unary_unary(method("Meta"))
            call = meta(b"", metadata=(("x-test", "retried"),), timeout=20)
            assert isinstance(call, RetryingUnaryUnaryCall)
            assert isinstance(call, grpc.aio.UnaryUnaryCall)
            done: list[Any] = []
            call.add_done_callback(done.append)
            remaining = call.time_remaining()
            assert remaining is not None and 19 < remaining <= 20
            assert not call.done() and not call.cancelled()
            assert await call == f"{other.name}:retried".encode()
            assert done == [call] and call.done() and not call.cancelled()
            assert await call.code() is grpc.StatusCode.OK
            assert await call.details() in ("", None)
            assert dict(await call.trailing_metadata())["x-echo"] == "retried"
            assert await call.initial_metadata() == grpc.aio.Metadata()
            assert await call == f"{other.name}:retried".encode(), "a call can be awaited again"
            late: list[Any] = []
            call.add_done_callback(late.append)
            assert late == [call]
            assert (first.calls, other.calls) == (1, 1)

            # Cancelled between attempts: no more attempts, and awaiting it raises
            # CancelledError, as a cancelled grpc.aio call does.
            first.pushback = "1000"
            call = meta(b"")
            done.clear()
            call.add_done_callback(done.append)
            await until(lambda: first.calls == 2)
            assert not call.done()
            assert call.cancel()
            assert call.done() and call.cancelled() and done == [call]
            assert not call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await call.code() is grpc.StatusCode.CANCELLED
            # A later call with the same pushback: its retry fires after the cancelled call's
            # would have, so once it is answered that one would have been seen.
            marker = meta(b"")
            await until(lambda: first.calls == 3)
            assert await marker == f"{other.name}:".encode()
            assert (first.calls, other.calls) == (3, 2)

            # Cancelled in flight: the attempt is cancelled on the server too.
            first.fail_with = None
            held = channel.unary_unary(method("Hold"))(b"h")
            await until(lambda: first.holding == 1)
            assert held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            await until(lambda: first.cancelled == 1)
            assert held.cancelled()


async def test_a_task_cancelled_while_awaiting_cancels_the_call(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(1) as servers, registered(client, service, servers):
        async with await resolve(client, service) as channel:
            await ready(channel, 1)
            held = channel.unary_unary(method("Hold"))(b"h")

            async def waiter() -> None:
                await held

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await until(lambda: servers[0].holding == 1)
                tg.cancel_scope.cancel()
            await until(lambda: servers[0].cancelled == 1)
            assert held.cancelled()


async def test_enable_retries_0_gives_grpc_aio_calls_and_no_retry(
    client: EtcdClient, service: str
) -> None:
    options = [*service_config(for_echo(retry_policy())), ("grpc.enable_retries", 0)]
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(client, service, options=options) as channel:
            await ready(channel, 2)
            call = channel.unary_unary(method("Unary"))(b"x")
            # grpc.aio's own call object, not a retrying one.
            assert type(call).__module__ == "grpc.aio._call"
            assert not isinstance(call, RetryingUnaryUnaryCall)
            await call
            servers[0].fail_with = servers[1].fail_with = UNAVAILABLE
            await failure(channel)
            assert sum(attempts(servers)) == 1 + 1
            assert channel.statistics().retries == 0


async def test_retries_go_through_interceptors(client: EtcdClient, service: str) -> None:
    seen: list[str] = []

    class Count(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(details.method)
            return await continuation(details, request)

    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        async with await resolve(
            client, service, options=options, interceptors=[Count()], policy="pick_first"
        ) as channel:
            await ready(channel, 2)
            first, other = await in_pick_order(channel, servers)
            first.fail_with = UNAVAILABLE
            assert await unary(channel) == f"{other.name}:x".encode()
    assert len(seen) == 1 + 2


def test_service_configs_that_break_the_rules_are_refused() -> None:
    cases: list[tuple[Any, str]] = [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        ({"methodConfig": {}}, "methodConfig must be a list"),
        ({"methodConfig": [for_echo(retry_policy(max_attempts=1))]}, "maxAttempts must be"),
        ({"methodConfig": [for_echo(retry_policy(initial="0s"))]}, "must be > 0"),
        ({"methodConfig": [for_echo(retry_policy(maximum="1m"))]}, "maxBackoff must be a dur"),
        ({"methodConfig": [for_echo(retry_policy(codes=()))]}, "non-empty list"),
        ({"methodConfig": [for_echo(retry_policy(codes=("NOPE",)))]}, "'NOPE' is not a status"),
        ({"methodConfig": [for_echo(retry_policy(codes=("OK",)))]}, "'OK' is not a status"),
        (
            {"methodConfig": [for_echo(retry_policy()), for_echo(retry_policy())]},
            "duplicate method name test.Echo",
        ),
        ({"methodConfig": [{"name": [{"method": "Unary"}]}]}, "a method needs its service"),
        ({"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}, "maxTokens must be an int"),
        ({"retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}}, r"in 1\.\.1000"),
        # grpc core reads maxTokens as an unsigned integer: it refuses 10.5 and 10.0 alike.
        ({"retryThrottling": {"maxTokens": 10.5, "tokenRatio": 0.1}}, "maxTokens must be an int"),
        ({"retryThrottling": {"maxTokens": 10.0, "tokenRatio": 0.1}}, "maxTokens must be an int"),
        ({"retryThrottling": {"maxTokens": 10}}, "tokenRatio must be a number"),
        # Three decimals kept, truncated, as grpc core does: 0.0009 is 0.
        ({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0009}}, "at least 0.001"),
        ({"loadBalancingConfig": [{"nope": {}}]}, "names no policy the pool implements"),
        ({"loadBalancingPolicy": "nope"}, "is not a policy the pool implements"),
        ({"healthCheckConfig": {"serviceName": 3}}, "serviceName must be a string"),
    ]
    from aiodiscovery._resilience.retrypolicy import retry_config  # noqa: PLC0415

    for document, message in cases:
        text = document if isinstance(document, str) else json.dumps(document)
        with pytest.raises(ValueError, match=message):
            options = [("grpc.service_config", text)]
            retry_config(options, LOG)
            channel_rules(options)


def test_token_ratio_keeps_three_decimals_truncated() -> None:
    from aiodiscovery._resilience.retrypolicy import retry_config  # noqa: PLC0415

    for ratio, kept in ((0.5999, 0.599), (1.005, 1.005), (0.001, 0.001), (2, 2.0)):
        document = {"retryThrottling": {"maxTokens": 10, "tokenRatio": ratio}}
        config, _ = retry_config([("grpc.service_config", json.dumps(document))], LOG)
        assert config.throttle is not None and config.throttle.token_ratio == kept, ratio


async def test_resolve_refuses_a_bad_service_config(client: EtcdClient, service: str) -> None:
    with pytest.raises(ValueError, match=r"invalid grpc\.service_config: .*maxAttempts"):
        await resolve(
            client, service, options=service_config(for_echo(retry_policy(max_attempts=0)))
        )


def test_the_subchannels_get_the_service_config_without_retries() -> None:
    from aiodiscovery._resilience.retrypolicy import retry_config  # noqa: PLC0415

    document = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            for_echo(retry_policy(), timeout="2s", waitForReady=True),
            {"name": [{"service": "x"}], "hedgingPolicy": {"maxAttempts": 2}},
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    document["healthCheckConfig"] = {"serviceName": "svc"}
    config, options = retry_config([("a", 1), ("grpc.service_config", json.dumps(document))], LOG)
    assert options[0] == ("a", 1)
    # grpc core's own retries are off underneath: it would replace the pool's
    # grpc-previous-rpc-attempts header. The balancer and health checks are the pool's too.
    assert options[2] == ("grpc.enable_retries", 0)
    assert json.loads(options[1][1]) == {
        "methodConfig": [
            {"name": [{"service": "test.Echo"}], "timeout": "2s", "waitForReady": True},
            {"name": [{"service": "x"}]},
        ],
    }
    rules = config.for_method("/test.Echo/Unary")
    assert rules is not None and rules.timeout == 2 and rules.policy is not None
    assert rules.policy.max_attempts == 3 and rules.policy.initial_backoff == 0.01
    assert config.throttle is not None and config.throttle.max_tokens == 10
    other = config.for_method("/y.Z/M")
    assert other is not None and other.policy is None, "transparent retries only"


async def test_the_status_of_a_finished_call_can_be_read_at_once(
    client: EtcdClient, service: str
) -> None:
    # The pool reads each finished call's status in its done callback, from grpc.aio's private
    # attributes (callstatus.py): failure counts, outlier detection and retry decisions rest on
    # it. Check it where the pool reads it, with the grpcio installed: on the calls its
    # subchannels start (plain and intercepted), through what the pool does with the status.
    class Passing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(details, request)

    aborted = service_config(for_echo(retry_policy(max_attempts=2, codes=("ABORTED",))))
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server = servers[0]
        for interceptors in (None, [Passing()]):
            for options in ([], aborted):
                async with await resolve(
                    client, service, interceptors=interceptors, options=options
                ) as channel:
                    server.fail_with = None
                    assert await unary(channel) == b"s0:x"
                    server.fail_with = grpc.StatusCode.ABORTED
                    assert (await failure(channel)).code() is grpc.StatusCode.ABORTED
                    attempts = 2 if options else 1
                    # Read from each attempt: the failures counted, the retry decided.
                    await until(
                        lambda channel=channel, attempts=attempts: (
                            channel.statistics().subchannels[server.address].failures == attempts
                        )
                    )
                    assert channel.statistics().retries == attempts - 1, (interceptors, options)


async def test_statistics_count_retries(client: EtcdClient, service: str) -> None:
    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(2) as servers, registered(client, service, servers):
        channel: BalancedChannel = await resolve(client, service, options=options)
        async with channel:
            await ready(channel, 2)
            servers[0].fail_with = UNAVAILABLE
            replies = [await unary(channel) for _ in range(10)]
            assert where(replies) == {"s1": 10}
            stats = channel.statistics()
            # One retry per call that came to s0 first.
            assert stats.retries == servers[0].calls > 0
            assert (stats.retries_throttled, stats.transparent_retries) == (0, 0)
            assert stats.retry_tokens is None


async def test_a_retry_that_cannot_start_is_logged_above_debug(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    class FailsAfterFirst(Picker[Any]):
        """Picks the first subchannel once; any later pick (the retry's) is a fault."""

        def __init__(self) -> None:
            self.subchannels: Any = ()
            self.picks = 0

        def update(self, subchannels: Any) -> None:
            self.subchannels = subchannels

        def pick(self) -> Any:
            self.picks += 1
            if self.picks > 1:
                raise RuntimeError("picker fault")
            return self.subchannels[0]

    options = service_config(for_echo(retry_policy()))
    async with faulty_servers(1) as servers, registered(client, service, servers):
        servers[0].fail_with = UNAVAILABLE
        async with await resolve(
            client, service, options=options, policy=FailsAfterFirst
        ) as channel:
            await ready(channel, 1)
            with caplog.at_level(logging.DEBUG, logger="aiodiscovery"):
                error = await failure(channel)
            # The caller gets the attempt's own error; the fault is not hidden at DEBUG.
            assert error.code() is UNAVAILABLE and servers[0].calls == 1
            records = [r for r in caplog.records if "could not start a retry" in r.getMessage()]
            assert [r.levelno for r in records] == [logging.WARNING]
            assert "picker fault" in records[0].getMessage()

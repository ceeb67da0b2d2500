"""Retries (gRFC A6) through ``resolve()`` beside grpcio's own core, on the same server.

Every test runs one scenario on a native ``grpc.aio`` channel (``grpc.enable_retries`` and the
same service config) and on ``resolve()`` over the same server registered in etcd, then
compares what the server saw and what the caller got (see :mod:`tests.grpc_differential`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import grpc
import pytest

from aiodiscovery import EtcdClient, Registrar, resolve
from aiodiscovery.testing import free_port

from .faulty_servers import FaultyServer, faulty_servers
from .grpc_differential import (
    both_channels,
    compare,
    quantiles,
    service_config,
    stream,
    unary,
    without_server_names,
)

pytestmark = pytest.mark.anyio

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def retrying(
    max_attempts: int = 3,
    initial: str = "0.01s",
    maximum: str = "0.05s",
    multiplier: float = 2,
    codes: tuple[str, ...] = ("UNAVAILABLE",),
    **top: Any,
) -> dict[str, Any]:
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": initial,
        "maxBackoff": maximum,
        "backoffMultiplier": multiplier,
        "retryableStatusCodes": list(codes),
    }
    return service_config({"name": [{"service": "test.Echo"}], "retryPolicy": policy}, **top)


async def on_one_server(
    client: EtcdClient,
    service: str,
    config: dict[str, Any],
    scenario: Any = unary,
    calls: int = 1,
    **faults: Any,
) -> tuple[Any, Any]:
    """Run ``scenario`` on core and on the pool, over one server with ``faults`` set."""
    async with faulty_servers(1) as servers:
        server: FaultyServer = servers[0]
        for name, value in faults.items():
            setattr(server, name, value)
        with anyio.fail_after(40):
            return await compare(client, service, servers, config, scenario, calls)


def same_outcomes(core: Any, pool: Any) -> None:
    assert [without_server_names(o) for o in pool.outcomes] == [
        without_server_names(o) for o in core.outcomes
    ]


async def test_a_failure_before_any_header_is_retried(client: EtcdClient, service: str) -> None:
    core, pool = await on_one_server(client, service, retrying(), fail_with=UNAVAILABLE)
    assert core.counts == pool.counts == [3]
    same_outcomes(core, pool)


async def test_headers_with_entries_commit_the_call(client: EtcdClient, service: str) -> None:
    core, pool = await on_one_server(
        client, service, retrying(), fail_with=UNAVAILABLE, initial_metadata=(("x-h", "1"),)
    )
    assert core.counts == pool.counts == [1]
    same_outcomes(core, pool)
    assert ("x-h", "1") in pool.outcomes[0].initial_metadata


async def test_empty_headers_commit_the_call_in_core_only(client: EtcdClient, service: str) -> None:
    # A known difference, not a chosen one: grpc core commits on headers without entries and
    # does not retry. Through grpcio's Python API a call that got empty headers then failed
    # looks exactly like one failed before any (a Trailers-Only response): same status, same
    # empty initial metadata, and the C core's trailers-only flag is not exported. The pool
    # therefore retries it. docs/guides/clients.md says so: a server whose methods are not
    # idempotent must send at least one header entry before it fails retryably, or the
    # method must be left out of the retryPolicy.
    core, pool = await on_one_server(
        client, service, retrying(), fail_with=UNAVAILABLE, initial_metadata=()
    )
    assert core.counts == [1]
    assert pool.counts == [3]
    assert without_server_names(pool.outcomes[0]) == without_server_names(core.outcomes[0])


async def test_a_response_message_commits_a_stream(client: EtcdClient, service: str) -> None:
    core, pool = await on_one_server(
        client, service, retrying(), stream, fail_with=UNAVAILABLE, stream_before_failing=1
    )
    assert core.counts == pool.counts == [1]
    same_outcomes(core, pool)
    assert len(pool.outcomes[0].replies) == 1


async def test_a_stream_failing_before_anything_is_retried(
    client: EtcdClient, service: str
) -> None:
    core, pool = await on_one_server(
        client, service, retrying(), stream, fail_with=UNAVAILABLE, stream_before_failing=0
    )
    assert core.counts == pool.counts == [3]
    same_outcomes(core, pool)


async def test_retries_carry_grpc_previous_rpc_attempts(client: EtcdClient, service: str) -> None:
    core, pool = await on_one_server(
        client, service, retrying(max_attempts=4), calls=2, fail_with=UNAVAILABLE
    )
    assert core.previous_attempts == [[None, "1", "2", "3"]] * 2
    assert pool.previous_attempts == core.previous_attempts


async def test_max_attempts_above_5_is_capped_at_5(client: EtcdClient, service: str) -> None:
    core, pool = await on_one_server(
        client, service, retrying(max_attempts=9), fail_with=UNAVAILABLE
    )
    assert core.counts == pool.counts == [5]


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED])
async def test_codes_not_listed_are_not_retried(
    client: EtcdClient, service: str, code: grpc.StatusCode
) -> None:
    config = retrying(codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"))
    core, pool = await on_one_server(client, service, config, fail_with=code)
    assert core.counts == pool.counts == [1]
    same_outcomes(core, pool)


async def test_backoff_delays_are_distributed_as_in_grpc_core(
    client: EtcdClient, service: str
) -> None:
    # A6 as revised: the n-th retry waits random(0.8, 1.2) x min(initial x multiplier^(n-1),
    # max). Load only ever makes a delay longer, so the bounds below are lower bounds and a
    # ratio of medians to the core's own, measured in the same run.
    config = retrying(max_attempts=3, initial="0.05s", maximum="0.08s")
    core, pool = await on_one_server(client, service, config, calls=30, fail_with=UNAVAILABLE)
    for retry, backoff in ((1, 0.05), (2, 0.08)):
        core_q = quantiles(core.gaps(retry))
        pool_q = quantiles(pool.gaps(retry))
        assert min(pool.gaps(retry)) >= 0.8 * backoff, (retry, pool_q, core_q)
        # The old draw from [0, backoff] gave a median of about half the core's.
        assert 0.8 <= pool_q[1] / core_q[1] <= 1.5, (retry, pool_q, core_q)
        # The spread of the jitter: the core's and ours span most of +-20 %.
        assert pool_q[2] - pool_q[0] >= 0.4 * (core_q[2] - core_q[0]), (retry, pool_q, core_q)


async def test_server_pushback_sets_the_delay(client: EtcdClient, service: str) -> None:
    config = retrying(max_attempts=2, initial="0.01s", maximum="0.01s")
    core, pool = await on_one_server(
        client, service, config, calls=3, fail_with=UNAVAILABLE, pushback="150"
    )
    assert core.counts == pool.counts == [2, 2, 2]
    assert min(core.gaps(1)) >= 0.15
    assert min(pool.gaps(1)) >= 0.15


@pytest.mark.parametrize("pushback", ["-1", "-300"])
async def test_a_negative_pushback_stops_retries(
    client: EtcdClient, service: str, pushback: str
) -> None:
    core, pool = await on_one_server(
        client, service, retrying(), fail_with=UNAVAILABLE, pushback=pushback
    )
    assert core.counts == pool.counts == [1]
    same_outcomes(core, pool)


async def test_retry_throttling_spends_tokens_as_grpc_core(
    client: EtcdClient, service: str
) -> None:
    # 10 tokens: each failed attempt takes one, a retry needs more than 5 left. Both sides run
    # on fresh servers, so grpc core's throttle (kept per server name) starts full.
    config = retrying(max_attempts=3, retryThrottling={"maxTokens": 10, "tokenRatio": 0.5})
    core, pool = await on_one_server(client, service, config, calls=5, fail_with=UNAVAILABLE)
    assert core.counts == [3, 2, 1, 1, 1]
    assert pool.counts == core.counts


async def test_a_retry_past_the_deadline_is_not_made(client: EtcdClient, service: str) -> None:
    # Intended difference: grpc core waits out the backoff until the deadline and fails the
    # call DEADLINE_EXCEEDED; the pool knows the retry cannot start in time and ends the call
    # at once with the attempt's own error (docs/guides/clients.md, "Retries").
    config = retrying(initial="1s", maximum="1s")
    scenario = functools.partial(unary, timeout=0.3)
    core, pool = await on_one_server(client, service, config, scenario, fail_with=UNAVAILABLE)
    assert core.counts == pool.counts == [1]
    assert core.codes == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert pool.codes == [UNAVAILABLE]


async def test_wait_for_ready_calls_are_retried_alike(client: EtcdClient, service: str) -> None:
    # wait_for_ready with a deadline far enough for every attempt: the policy decides alone.
    config = retrying(max_attempts=5, initial="0.02s", maximum="0.02s", multiplier=1)
    scenario = functools.partial(unary, timeout=0.25, wait_for_ready=True)
    core, pool = await on_one_server(client, service, config, scenario, fail_with=UNAVAILABLE)
    assert core.counts == pool.counts == [5]
    same_outcomes(core, pool)


@pytest.mark.parametrize(
    ("pushback", "attempts"),
    # grpc core parses the trailer itself and hands the application its own rendering: "+100"
    # and " 100" arrive as "100", so the pool sees a valid pushback there too.
    [("abc", 1), ("1.5", 1), ("", 1), ("+100", 3), (" 100", 3)],
)
async def test_a_malformed_pushback_stops_retries(
    client: EtcdClient, service: str, pushback: str, attempts: int
) -> None:
    scenario = functools.partial(unary, timeout=5)
    core, pool = await on_one_server(
        client, service, retrying(), scenario, fail_with=UNAVAILABLE, pushback=pushback
    )
    assert (core.counts, pool.counts) == ([attempts], [attempts])
    same_outcomes(core, pool)


async def test_successes_give_tokens_back_as_grpc_core(client: EtcdClient, service: str) -> None:
    # 10 tokens, 0.4009 per success (0.4 once truncated to three decimals). Three failing calls
    # leave 4 tokens; five successes bring back 2.0, not 2.0045: the next failing call leaves
    # 5.0, which is not more than half, so it is not retried.
    config = retrying(max_attempts=3, retryThrottling={"maxTokens": 10, "tokenRatio": 0.4009})
    async with faulty_servers(1) as servers:
        server = servers[0]
        plan = [UNAVAILABLE] * 3 + [None] * 5 + [UNAVAILABLE] * 2
        observed = []
        async with both_channels(client, service, servers, config) as (native, ours):
            for channel in (native, ours):
                result = []
                for code in plan:
                    server.fail_with = code
                    mark = len(server.attempts)
                    outcome = await unary(channel)
                    result.append((outcome.code, len(server.attempts) - mark))
                observed.append(result)
        core, pool = observed
        assert [n for _, n in core] == [3, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        assert pool == core


@pytest.mark.parametrize("how", ["argument", "method config"])
async def test_wait_for_ready_waits_for_a_dead_endpoint(
    client: EtcdClient, service: str, how: str
) -> None:
    # Nothing listens on the one registered address: without wait_for_ready a call fails
    # UNAVAILABLE, with it (as the call's argument or the method config's waitForReady) it
    # waits until its deadline, on both sides.
    address = f"127.0.0.1:{free_port()}"
    extra = {"waitForReady": True} if how == "method config" else {}
    document = retrying()
    document["methodConfig"][0].update(extra)
    waiting: dict[str, Any] = {"timeout": 0.5}
    if how == "argument":
        waiting["wait_for_ready"] = True
    native = grpc.aio.insecure_channel(
        f"ipv4:{address}",
        options=[("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(document))],
    )
    options = [("grpc.service_config", json.dumps(document))]
    async with Registrar(client, service, address, ttl=5):
        async with native, await resolve(client, service, options=options) as ours:
            for channel in (native, ours):
                with anyio.fail_after(10):
                    outcome = await unary(channel, **waiting)
                assert outcome.code is grpc.StatusCode.DEADLINE_EXCEEDED, (channel, outcome)
                if how == "argument":
                    with anyio.fail_after(10):
                        outcome = await unary(channel, timeout=5)
                    assert outcome.code is UNAVAILABLE, (channel, outcome)


async def test_a_pushback_past_int32_stops_retries_where_grpc_core_waits(
    client: EtcdClient, service: str
) -> None:
    # Intended difference: A6 makes the pushback a non-negative int32, and anything else a
    # "do not retry"; grpc core reads 2147483648 as a 24-day wait and holds the call until its
    # deadline. The pool ends the call with the attempt's own error.
    scenario = functools.partial(unary, timeout=1)
    core, pool = await on_one_server(
        client, service, retrying(), scenario, fail_with=UNAVAILABLE, pushback="2147483648"
    )
    assert (core.counts, pool.counts) == ([1], [1])
    assert (core.codes, pool.codes) == ([grpc.StatusCode.DEADLINE_EXCEEDED], [UNAVAILABLE])

"""The server's ``grpc-retry-pushback-ms`` read as gRFC A6 says, beside grpc core's own retries."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from aiodiscovery import EtcdClient, resolve
from aiodiscovery._pool.retrying import _STOP, _pushback
from aiodiscovery._resilience.retrypolicy import MAX_PUSHBACK_MS, pushback_delay

from .faulty_servers import FaultyServer, faulty_servers, registered
from .test_pool import ready
from .test_pool_retry import failure, for_echo, retry_policy, service_config

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("250", 0.25),
        (b"250", 0.25),
        (str(MAX_PUSHBACK_MS), MAX_PUSHBACK_MS / 1000),  # int32 max
        (str(MAX_PUSHBACK_MS + 1), None),  # int32 max + 1
        ("99999999999", None),  # once read as 3.2 years
        ("\u00b2", None),  # a digit to str.isdigit(), not to A6 (and int() refuses it)
        ("\u00b2".encode(), None),
        ("\u0661", None),  # ARABIC-INDIC DIGIT ONE: int() would take it
        ("-1", None),
        ("-0", None),
        ("", None),
        ("+5", None),
        (" 5", None),
        ("5 ", None),
        ("05", None),
        ("1.5", None),
    ],
)
def test_pushback_is_a_non_negative_int32_in_ascii_digits(
    value: str | bytes, seconds: float | None
) -> None:
    assert pushback_delay(value) == seconds
    # What the pool reads from an attempt's trailers: _STOP is "do not retry".
    expected = _STOP if seconds is None else seconds
    assert _pushback((("grpc-retry-pushback-ms", value),)) == expected


async def _native_attempts(
    server: FaultyServer, policy: dict[str, object]
) -> tuple[int, grpc.StatusCode]:
    """Attempts grpc core's own retries make on one call, and how the call ends."""
    options = [("grpc.enable_retries", 1), *service_config(for_echo(policy))]
    server.calls = 0
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        error = await failure(channel, timeout=1.0)
    return server.calls, error.code()


# (pushback, (attempts, final code) through our pool, the same through grpc core's retries), seen
# by one real server failing every call with UNAVAILABLE; maxAttempts 3, a 1 s deadline. Attempts
# agree everywhere. How the call ends differs where core waits out the deadline: core parses the
# value as an int64 (so int32 max + 1 is a wait of 24.8 days where A6 says "do not retry"), waits
# out "0" (grpcio 1.85), and starts a wait the deadline cuts short, where the pool fails at once
# with the server's own status when the pushback outlasts the deadline.
CASES = [
    ("0", (3, UNAVAILABLE), (1, DEADLINE_EXCEEDED)),
    ("10", (3, UNAVAILABLE), (3, UNAVAILABLE)),
    ("-1", (1, UNAVAILABLE), (1, UNAVAILABLE)),
    ("", (1, UNAVAILABLE), (1, UNAVAILABLE)),
    ("abc", (1, UNAVAILABLE), (1, UNAVAILABLE)),
    (str(MAX_PUSHBACK_MS), (1, UNAVAILABLE), (1, DEADLINE_EXCEEDED)),
    (str(MAX_PUSHBACK_MS + 1), (1, UNAVAILABLE), (1, DEADLINE_EXCEEDED)),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("pushback", "pool", "core"), CASES)
async def test_pushback_attempts_match_grpc_core(
    client: EtcdClient,
    service: str,
    pushback: str,
    pool: tuple[int, grpc.StatusCode],
    core: tuple[int, grpc.StatusCode],
) -> None:
    policy = retry_policy(max_attempts=3)
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server = servers[0]
        server.fail_with = UNAVAILABLE
        server.pushback = pushback
        assert await _native_attempts(server, policy) == core
        async with await resolve(
            client, service, options=service_config(for_echo(policy))
        ) as channel:
            await ready(channel, 1)
            server.calls = 0
            error = await failure(channel, timeout=1.0)
        assert (server.calls, error.code()) == pool

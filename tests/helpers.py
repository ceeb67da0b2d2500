"""Small waiting helpers for tests: wait on a condition, bounded in time, never a blind sleep."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from aiodiscovery import EtcdUnavailableError
from aiodiscovery._backoff import Backoff

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], *, timeout: float = 15.0
) -> T:
    """Re-run ``probe`` until ``predicate`` holds on its result; fail after ``timeout`` seconds."""
    backoff = Backoff(initial=0.01, cap=0.2)
    last: T | None = None
    try:
        with anyio.fail_after(timeout):
            while True:
                last = await probe()
                if predicate(last):
                    return last
                await backoff.sleep()
    except TimeoutError:
        raise AssertionError(
            f"condition not met within {timeout} s; last value: {last!r}"
        ) from None


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, re-checking often; fail after ``timeout`` seconds."""
    backoff = Backoff(initial=0.002, cap=0.02)
    try:
        with anyio.fail_after(timeout):
            while not condition():
                await backoff.sleep()
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s") from None


async def until_accepted(write: Callable[[], Awaitable[object]], timeout: float = 30.0) -> None:
    """Retry ``write`` until etcd takes it: a request caught by a member's death or an election
    may time out (as in Go's client), a retry on the surviving members must land."""
    with anyio.fail_after(timeout):
        while True:
            try:
                await write()
            except EtcdUnavailableError:
                continue
            return

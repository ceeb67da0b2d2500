"""Untrusted registry data, bounded: memory per endpoint, and log lines that scale with problems."""

from __future__ import annotations

import gc
import logging
import sys
import tracemalloc
from collections.abc import Callable

import pytest
from aetcd import rpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aiodiscovery import (
    BUDGET_RATIO,
    DEFAULT_METADATA_BUDGET,
    DecodeError,
    Endpoint,
    EtcdClient,
    Watcher,
    decode_endpoint,
    encode_endpoint,
)
from aiodiscovery._etcd.watch.badvalues import BURST, WINDOW, BadValueLog

from .helpers import until


async def put_raw(client: EtcdClient, items: list[tuple[str, bytes]]) -> None:
    """Write values as anyone with write access could, 100 to a transaction."""
    for start in range(0, len(items), 100):
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
            for key, value in items[start : start + 100]
        ]
        await client.unary(lambda m: m.kv.Txn, rpc.TxnRequest(success=ops))


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.mark.anyio
async def test_2000_bad_values_make_a_handful_of_lines_at_a_start(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [(f"{service}/bad{i:04}\n", b"{not json") for i in range(2000)]
    await put_raw(client, [*bad, (f"{service}/good", b'{"Addr":"127.0.0.1:1"}')])
    with caplog.at_level(logging.DEBUG, logger="aiodiscovery.watch"):
        async with Watcher(client, service) as watcher:
            assert list(watcher.snapshot) == [f"{service}/good"]
            assert watcher.statistics().bad_values == 2000
            warnings = lines(caplog, logging.WARNING)
            assert len(warnings) == 1, warnings[:5]
            [summary] = warnings
            assert "skipping 2000 values" in summary and "and 1997 more" in summary
            # The first keys, escaped: a newline in a key starts no forged line.
            assert f"{service}/bad0000\\n" in summary and "\n" not in summary
            debug = lines(caplog, logging.DEBUG)
            assert sum("skipping endpoint" in line for line in debug) == 2000

            # Keys going bad while watched: a line each, but no more than BURST a WINDOW.
            caplog.clear()
            more = [(f"{service}/late{i:02}", b'{"Addr":42}') for i in range(3 * BURST)]
            await put_raw(client, more)
            await until(lambda: watcher.statistics().bad_values == 2000 + len(more))
            warnings = lines(caplog, logging.WARNING)
            assert len(warnings) == BURST
            assert all('"Addr" must be a string' in line for line in warnings)
            assert sum("skipping endpoint" in line for line in lines(caplog, logging.DEBUG)) == (
                2 * BURST
            )


def test_watch_lines_come_back_after_the_window_and_say_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = BadValueLog(logging.getLogger("aiodiscovery.watch"), "svc/", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="aiodiscovery.watch"):
        for i in range(BURST + 5):
            log.changed(f"svc/{i}", "bad")
        assert len(caplog.records) == BURST
        now[0] = WINDOW
        log.changed("svc/again", "bad")
    last = caplog.records[-1].getMessage()
    assert len(caplog.records) == BURST + 1
    assert "svc/again" in last and "5 more such lines" in last


# -- memory: what one endpoint may hold ---------------------------------------------------------


def empties(count: int) -> bytes:
    """The issue's value: 1.35 MB of empty objects, 64 bytes each once decoded."""
    return b'{"Addr":"127.0.0.1:1","Metadata":[' + b",".join([b"{}"] * count) + b"]}"


def retained(action: Callable[[], object]) -> tuple[object, int]:
    """What ``action()`` returns and the bytes still allocated for it afterwards (tracemalloc).

    It runs once beforehand, so that what the first call allocates for good (caches) is not
    taken for what the result holds.
    """
    action()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = action()
        gc.collect()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.anyio
async def test_three_huge_values_cost_a_watcher_at_most_4x_their_size(
    client: EtcdClient, service: str
) -> None:
    value = empties(450_000)
    assert len(value) > 1_350_000
    for i in range(3):  # one to a request: etcd takes 1.5 MiB at most
        await put_raw(client, [(f"{service}/big{i}", value)])
    await put_raw(client, [(f"{service}/good", b'{"Addr":"127.0.0.1:1","Metadata":"zone=a"}')])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with Watcher(client, service) as watcher:
            assert list(watcher.snapshot) == [f"{service}/good"]
            assert watcher.statistics().bad_values == 3
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 4 * 3 * len(value), f"{held:,} bytes held for {3 * len(value):,} stored"


def test_budget_refuses_with_a_clear_reason_and_none_lifts_it() -> None:
    value = empties(10_000)
    reason = r"\(10,002 arrays and objects; the limit is 120,140 bytes"
    with pytest.raises(DecodeError, match=reason):
        decode_endpoint("k", value, budget=DEFAULT_METADATA_BUDGET)
    # Not decoded at all: the count comes from the bytes.
    _, held = retained(lambda: _catch(lambda: decode_endpoint("k", value, budget=64 * 1024)))
    assert held < 4 * len(value)
    assert len(decode_endpoint("k", value).metadata) == 10_000  # no budget: Go's behaviour
    # Scalars and strings in brackets are not containers; a long string is held at its size.
    text = "[" * 500_000
    big = b'{"Addr":"a:1","Metadata":"' + text.encode() + b'"}'
    assert decode_endpoint("k", big, budget=1024).metadata == text
    numbers = b'{"Addr":"a:1","Metadata":[' + b",".join([b"1.5"] * 100_000) + b"]}"
    with pytest.raises(DecodeError, match="bytes in memory"):
        decode_endpoint("k", numbers, budget=1024)


def test_small_values_skip_the_count_yet_stay_under_the_budget() -> None:
    # The shape holding the most per stored byte, as long as a value may be uncounted.
    budget = 8192
    for levels in range(1, 40):
        value = b'{"Addr":"a:1","Metadata":' + b'{"":' * levels + b"0" + b"}" * levels + b"}"
        if len(value) * 64 > budget:
            break
        endpoint, held = retained(lambda v=value: decode_endpoint("k", v, budget=budget))
        assert isinstance(endpoint, Endpoint)
        assert held <= budget, (levels, held)
    assert levels > 20


def test_unknown_fields_are_not_kept() -> None:
    # Go skips them; the fast path's scanner saw them last, and must not keep them alive.
    junk = b"[" + b",".join([b'{"a":"' + b"x" * 40 + b'"}'] * 300) + b"]"
    value = b'{"Addr":"a:1","Metadata":"m","Junk":' + junk + b"}"
    endpoint, held = retained(lambda: decode_endpoint("k", value))
    assert endpoint == Endpoint("a:1", "m")
    assert held < 1024, held


@pytest.mark.parametrize(
    ("budget", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("64k", TypeError)]
)
def test_a_bad_budget_is_refused_at_once(budget: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="metadata_budget"):
        EtcdClient("http://127.0.0.1:2379", metadata_budget=budget)  # type: ignore[arg-type]


def _catch(action: Callable[[], object]) -> object:
    try:
        return action()
    except DecodeError as exc:
        return exc


# Any JSON value Go accepts as metadata, small enough to come out either side of a small budget.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40).filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t))
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=400,
)
BUDGET = 4096


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadata=_json, addr=st.text(min_size=1, max_size=30))
def test_retained_memory_per_endpoint_stays_under_the_bound(metadata: object, addr: str) -> None:
    assume(not any("\ud800" <= c <= "\udfff" for c in addr))
    value = encode_endpoint(Endpoint(addr, metadata))
    bound = max(BUDGET, BUDGET_RATIO * len(value))
    endpoint, held = retained(lambda: _catch(lambda: decode_endpoint("k", value, budget=BUDGET)))
    if isinstance(endpoint, DecodeError):
        assert f"the limit is {bound:,} bytes" in endpoint.reason
        return
    assert isinstance(endpoint, Endpoint)
    assert endpoint == decode_endpoint("k", value)  # the budget changes nothing it lets through
    # The endpoint object itself, on top of its address and metadata.
    assert held <= bound + sys.getsizeof(endpoint) + 64

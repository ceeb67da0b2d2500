"""Untrusted registry data, bounded: log lines scale with problems, not with data (real etcd)."""

from __future__ import annotations

import logging

import pytest
from aetcd import rpc

from aiodiscovery import EtcdClient, Watcher
from aiodiscovery._etcd.watch.badvalues import BURST, WINDOW, BadValueLog

from .helpers import until

pytestmark = pytest.mark.anyio


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

"""etcd's own Go Manager against aiodiscovery on one real etcd: same bytes, same endpoints.

The Go side is ``naming_probe manager``: go.etcd.io/etcd/clientv3/naming/endpoints (3.4.23, the
same API and record as 3.5's client/v3/naming) built with Debian's Go. Go 1.19 writes U+0008 and
U+000C as ``\\u0008``/``\\u000c`` where Go 1.22+ (and aiodiscovery) write ``\\b``/``\\f``; byte
comparisons normalise only that.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    Operation,
    Update,
    Watcher,
    encode_endpoint,
    resolve,
)
from aiodiscovery._codec.encoder import go_json
from aiodiscovery.testing import EtcdServer

from ..helpers import until
from ..servers import EchoServer, method
from .fuzz import canon
from .probe import GoChild, as_go_1_22

pytestmark = pytest.mark.anyio

# ASCII and not, HTML-escaped characters, control characters, and metadata of every JSON kind.
ENDPOINTS = [
    Endpoint("10.0.0.1:50051"),
    Endpoint("[::1]:443", "weight=2&zone=eu-west-1a"),
    Endpoint("h\u00f4te-\u65e5\u672c:1", {"zone": "\u00e9t\u00e9", "weight": 3, "\U0001f600": 1}),
    Endpoint("a<b>&c:1", {"html": "<script>&amp;</script>", "sep": "\u2028\u2029"}),
    Endpoint("ctl:1", '\b\f\n\r\t\x00\x1f\x7f"\\/'),
    Endpoint("num:1", [0, -0.0, 0.1, 1e21, 1.5e-7, 123456789, 2**53, 5e-324, True, False, None]),
    Endpoint("nested:1", {"a": {"b": [{"c": []}, {}]}, "": ""}),
]


@pytest.fixture
async def go_manager(naming_probe: Path, etcd: EtcdServer, service: str) -> AsyncIterator[GoChild]:
    """Go's endpoints.Manager for the test's service, on the session's etcd."""
    async with await GoChild.start(
        naming_probe, "manager", "-etcd", etcd.url, "-target", service
    ) as child:
        yield child


def go_add(key: str, endpoint: Endpoint) -> dict[str, Any]:
    meta = "" if endpoint.metadata is None else go_json(endpoint.metadata)
    return {"add": True, "key": key, "addr": endpoint.addr, "meta": meta}


def as_go(endpoints: dict[str, Endpoint]) -> dict[str, dict[str, str]]:
    """Our endpoints in the form the Go program lists them."""
    return {k: {"addr": e.addr, "meta": canon(e.metadata)} for k, e in endpoints.items()}


async def raw_value(go_manager: GoChild, key: str) -> bytes:
    """The bytes etcd holds at ``key``, as Go's client reads them."""
    return base64.b64decode((await go_manager.ask({"op": "raw", "key": key}))["data"])


async def test_both_write_the_same_bytes_and_list_the_same_endpoints(
    client: EtcdClient, service: str, go_manager: GoChild
) -> None:
    em = EndpointManager(client, service)
    for i, endpoint in enumerate(ENDPOINTS):
        await em.add_endpoint(f"{service}/py-{i}", endpoint)
    await go_manager.ask(
        {"op": "update", "ups": [go_add(f"{service}/go-{i}", e) for i, e in enumerate(ENDPOINTS)]}
    )
    for i, endpoint in enumerate(ENDPOINTS):
        written_by_go = await raw_value(go_manager, f"{service}/go-{i}")
        written_by_us = await raw_value(go_manager, f"{service}/py-{i}")
        assert as_go_1_22(written_by_go) == written_by_us == encode_endpoint(endpoint)
        # The mirrored record (Go's internal.Update cannot be imported) writes what Manager does.
        mirror = await go_manager.ask(
            {"op": "mirror", "addr": endpoint.addr, "meta": go_add("", endpoint)["meta"]}
        )
        assert base64.b64decode(mirror["data"]) == written_by_go
    ours = await em.list_endpoints()
    assert len(ours) == 2 * len(ENDPOINTS)
    assert (await go_manager.ask({"op": "list"}))["eps"] == as_go(ours)


async def next_batch(batches: AsyncGenerator[list[Update], None]) -> list[tuple[str, str, Any]]:
    batch = await anext(batches)
    return sorted(
        (u.op.name, u.key.rsplit("/", 1)[-1], None if u.endpoint is None else u.endpoint.addr)
        for u in batch
    )


async def test_go_updates_reach_watch_and_watcher_as_one_batch(
    client: EtcdClient, service: str, go_manager: GoChild
) -> None:
    em = EndpointManager(client, service)
    async with Watcher(client, service) as watcher, contextlib.aclosing(em.watch()) as batches:
        assert await next_batch(batches) == []
        await go_manager.ask(
            {
                "op": "update",
                "ups": [
                    go_add(f"{service}/e1", Endpoint("h:1")),
                    go_add(f"{service}/e2", Endpoint("h:2", "weight=1")),
                ],
            }
        )
        assert await next_batch(batches) == [("ADD", "e1", "h:1"), ("ADD", "e2", "h:2")]
        revision = watcher.snapshot.revision
        await go_manager.ask(
            {
                "op": "update",
                "ups": [
                    {"add": False, "key": f"{service}/e1"},
                    go_add(f"{service}/e3", Endpoint("h:3")),
                    go_add(f"{service}/e2", Endpoint("h:2", "weight=5")),
                ],
            }
        )
        assert await next_batch(batches) == [
            ("ADD", "e2", "h:2"),
            ("ADD", "e3", "h:3"),
            ("DELETE", "e1", None),
        ]
        # The Watcher applies Go's transaction at one revision, never half of it.
        snapshot = await watcher.wait_for_change(revision)
        assert dict(snapshot) == {
            f"{service}/e2": Endpoint("h:2", "weight=5"),
            f"{service}/e3": Endpoint("h:3"),
        }
        await go_manager.ask({"op": "update", "ups": [{"add": False, "key": f"{service}/e2"}]})
        assert await next_batch(batches) == [("DELETE", "e2", None)]
        await until(lambda: list(watcher.snapshot) == [f"{service}/e3"])
        assert (await go_manager.ask({"op": "list"}))["eps"] == as_go(dict(watcher.snapshot))
        assert watcher.statistics().bad_values == 0


async def test_prefix_boundary_go_lists_sibling_services_we_do_not(
    client: EtcdClient, service: str, go_manager: GoChild
) -> None:
    # Go's Manager lists and watches the bare target, so "svc" also sees "svc-canary/...";
    # aiodiscovery's prefix always ends in "/". Ours is the safer choice: a service never
    # routes to a sibling whose name merely starts with its own.
    value = encode_endpoint(Endpoint("h:1"))
    for key in (f"{service}/e1", f"{service}-canary/e1", f"{service}x"):
        await client.put(key.encode(), value)
    ours = await EndpointManager(client, service).list_endpoints()
    assert list(ours) == [f"{service}/e1"]
    go_listed = (await go_manager.ask({"op": "list"}))["eps"]
    assert sorted(go_listed) == [f"{service}-canary/e1", f"{service}/e1", f"{service}x"]


# The two values of issue #10: metadata nested ~600 deep (1.2 KB), and a lone surrogate escape.
DEEP = b'{"Addr":"a","Metadata":' + b"[" * 600 + b"]" * 600 + b"}"
SURROGATE = b'{"Addr":"\\ud800:1"}'
# Values Go refuses too: they are skipped, each with one warning.
REFUSED = {
    "not-json": b"not json",
    "too-deep": b'{"Addr":"a","Metadata":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "big-number": b'{"Addr":"a","Metadata":1e400}',
}


async def test_values_that_stopped_clients_leave_every_other_endpoint_served(
    client: EtcdClient,
    service: str,
    go_manager: GoChild,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiodiscovery")
    em = EndpointManager(client, service)
    await client.put(f"{service}/deep".encode(), DEEP)
    await client.put(f"{service}/surrogate".encode(), SURROGATE)
    for name, value in REFUSED.items():
        await client.put(f"{service}/{name}".encode(), value)
    async with EchoServer("good") as server:
        await em.add_endpoint(f"{service}/good", Endpoint(server.address))
        listed = await em.list_endpoints()
        # What Go's Manager.List returns, no more, no less.
        assert (await go_manager.ask({"op": "list"}))["eps"] == as_go(listed)
        assert sorted(listed) == [f"{service}/{k}" for k in ("deep", "good", "surrogate")]
        assert listed[f"{service}/surrogate"] == Endpoint("\ufffd:1")
        assert repr(listed[f"{service}/deep"]).count("[") == 600
        async with (
            Watcher(client, service) as watcher,
            contextlib.aclosing(em.watch()) as batches,
            await resolve(client, service) as channel,
        ):
            assert dict(watcher.snapshot) == listed
            first = await anext(batches)
            assert {u.key: u.endpoint for u in first} == listed
            for _ in range(3):
                assert await channel.unary_unary(method("Unary"))(b"x") == b"good:x"
            # The watches keep going: a change after the bad values still arrives.
            await em.add_endpoint(f"{service}/later", Endpoint("h:9"))
            assert [(u.op, u.key) for u in await anext(batches)] == [
                (Operation.ADD, f"{service}/later")
            ]
            await until(lambda: f"{service}/later" in watcher.snapshot)
            assert watcher.statistics().bad_values == len(REFUSED)
            assert await channel.unary_unary(method("Unary"))(b"y") == b"good:y"
    for name in REFUSED:
        assert any(f"{service}/{name}'" in r.getMessage() for r in caplog.records), name

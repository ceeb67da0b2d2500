"""EndpointManager against a real etcd."""

from __future__ import annotations

import logging

import pytest

import aiodiscovery
import aiodiscovery._etcd.kv
from aiodiscovery import (
    Endpoint,
    EndpointManager,
    EtcdClient,
    LeaseNotFoundError,
    TransactionTooLargeError,
    Update,
    Watcher,
)
from aiodiscovery.testing import EtcdServer

from .helpers import eventually

pytestmark = pytest.mark.anyio


async def test_add_list_delete(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/e1", Endpoint("1.2.3.4:50051"))
    await em.add_endpoint(f"{service}/e2", Endpoint("1.2.3.5:50051", {"weight": 2}))
    assert await em.list_endpoints() == {
        f"{service}/e1": Endpoint("1.2.3.4:50051"),
        f"{service}/e2": Endpoint("1.2.3.5:50051", {"weight": 2}),
    }
    assert await em.delete_endpoint(f"{service}/e1") == 1
    assert await em.delete_endpoint(f"{service}/never-existed") == 0
    assert list(await em.list_endpoints()) == [f"{service}/e2"]


async def test_etcd_target_form_and_prefix_isolation(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, f"etcd:///{service}")
    other = EndpointManager(client, f"{service}_other")
    await em.add_endpoint(f"{service}/a", Endpoint("a:1"))
    await other.add_endpoint(f"{service}_other/b", Endpoint("b:1"))
    assert list(await em.list_endpoints()) == [f"{service}/a"]
    assert list(await other.list_endpoints()) == [f"{service}_other/b"]


async def test_update_is_atomic_and_collapses_repeated_keys(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/e1", Endpoint("1.2.3.4:50051"))
    before = (await client.get_prefix(service.encode())).header.revision
    # The etcd documentation's own example: in Go it fails with "duplicate key given in txn".
    await em.update(
        [
            Update.delete(f"{service}/e1"),
            Update.add(f"{service}/e1", Endpoint("1.2.3.14:50051")),
            Update.add(f"{service}/e2", Endpoint("1.2.3.15:50051")),
        ]
    )
    after = (await client.get_prefix(service.encode())).header.revision
    assert after == before + 1, "one update() must be one etcd revision"
    assert await em.list_endpoints() == {
        f"{service}/e1": Endpoint("1.2.3.14:50051"),
        f"{service}/e2": Endpoint("1.2.3.15:50051"),
    }
    await em.update([Update.add(f"{service}/e3", Endpoint("c:1")), Update.delete(f"{service}/e3")])
    assert f"{service}/e3" not in await em.list_endpoints()


@pytest.mark.parametrize(
    "bad_key", ["other/svc/e1", "{service}", "{service}x/e1", "{service}_other/e1"]
)
async def test_keys_outside_the_prefix_write_nothing(
    client: EtcdClient, service: str, bad_key: str
) -> None:
    em = EndpointManager(client, service)
    with pytest.raises(ValueError, match="outside the service prefix"):
        await em.update(
            [
                Update.add(f"{service}/good", Endpoint("a:1")),
                Update.add(bad_key.format(service=service), Endpoint("b:1")),
            ]
        )
    assert await em.list_endpoints() == {}


async def test_too_many_operations_names_the_limit(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    updates = [Update.add(f"{service}/{i}", Endpoint(f"h:{i}")) for i in range(129)]
    with pytest.raises(TransactionTooLargeError, match="at most 128") as info:
        await em.update(updates)
    assert (info.value.operations, info.value.limit) == (129, 128)
    await em.update(updates[:128])
    assert len(await em.list_endpoints()) == 128


async def test_unknown_lease_fails_the_whole_update(client: EtcdClient, service: str) -> None:
    em = EndpointManager(client, service)
    with pytest.raises(LeaseNotFoundError, match="lease not found"):
        await em.update(
            [
                Update.add(f"{service}/a", Endpoint("a:1")),
                Update.add(f"{service}/b", Endpoint("b:1"), lease=0x7EADBEEF),
            ]
        )
    assert await em.list_endpoints() == {}


async def test_endpoint_with_a_lease_vanishes_when_not_kept_alive(
    client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    lease = await client.lease(1)
    await em.add_endpoint(f"{service}/leased", Endpoint("a:1"), lease=lease)
    await em.add_endpoint(f"{service}/static", Endpoint("b:1"))
    stored = await client.get(f"{service}/leased".encode())
    assert stored is not None and stored.lease == lease.id
    remaining = await eventually(em.list_endpoints, lambda eps: len(eps) == 1, timeout=10)
    assert list(remaining) == [f"{service}/static"]


async def test_list_skips_bad_values_with_one_warning_for_all(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    em = EndpointManager(client, service)
    await client.put(f"{service}/a-good".encode(), b'{"Addr":"a:1"}')
    await client.put(f"{service}/b-bad".encode(), b"not json")
    await client.put(f"{service}/c-bad".encode(), b'{"Addr":42}')
    await client.put(f"{service}/d-good".encode(), b'{"Addr":"d:1","Metadata":"m"}')
    with caplog.at_level(logging.DEBUG, logger="aiodiscovery"):
        endpoints = await em.list_endpoints()
    assert endpoints == {
        f"{service}/a-good": Endpoint("a:1"),
        f"{service}/d-good": Endpoint("d:1", "m"),
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    [summary] = warnings
    assert "skipping 2 values" in summary
    assert f"{service}/b-bad" in summary and "not JSON" in summary
    assert f"{service}/c-bad" in summary and '"Addr" must be a string' in summary
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum(f"{service}/b-bad" in line or f"{service}/c-bad" in line for line in debug) == 2


async def test_list_reads_past_one_page(
    client: EtcdClient, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, so that 2,500 keys take many of them, all read at one revision.
    monkeypatch.setattr(aiodiscovery._etcd.kv, "_FIRST_PAGE", 100)
    monkeypatch.setattr(aiodiscovery._etcd.kv, "_PAGE_BYTES", 4000)
    em = EndpointManager(client, service)
    for start in range(0, 2500, 125):
        await em.update(
            [
                Update.add(f"{service}/{i:05}", Endpoint(f"10.0.{i // 250}.{i % 250}:1"))
                for i in range(start, start + 125)
            ]
        )
    endpoints = await em.list_endpoints()
    assert len(endpoints) == 2500
    assert endpoints[f"{service}/02499"] == Endpoint("10.0.9.249:1")


async def test_constructor_rejects_bad_targets(client: EtcdClient) -> None:
    with pytest.raises(ValueError, match="valid target looks like"):
        EndpointManager(client, "svc/")
    assert repr(EndpointManager(client, "etcd:///a/b")) == "<EndpointManager prefix='a/b/'>"


async def test_writes_fail_clearly_when_etcd_is_down(service: str) -> None:
    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url, timeout=1)
        try:
            etcd.kill()
            em = EndpointManager(client, service)
            with pytest.raises(aiodiscovery.EtcdUnavailableError, match="etcd unavailable"):
                await em.add_endpoint(f"{service}/a", Endpoint("a:1"))
        finally:
            await client.close()


async def test_large_values_never_make_a_list_outgrow_a_grpc_message(
    client: EtcdClient, service: str
) -> None:
    # Six values of ~1 MiB (etcd takes up to 1.5 MiB per request): one page of them would pass
    # gRPC's 4 MiB receive limit, and a list that pages by key count alone fails every time.
    em = EndpointManager(client, service)
    big = "x" * (1 << 20)
    for i in range(6):
        await em.add_endpoint(f"{service}/big{i}", Endpoint(f"10.0.0.{i}:1", big))
    await em.add_endpoint(f"{service}/small", Endpoint("10.0.1.1:1"))
    endpoints = await em.list_endpoints()
    assert sorted(endpoints) == sorted(
        [f"{service}/big{i}" for i in range(6)] + [f"{service}/small"]
    )
    assert endpoints[f"{service}/big5"].metadata == big
    async with Watcher(client, service) as watcher:
        assert len(watcher.snapshot) == 7

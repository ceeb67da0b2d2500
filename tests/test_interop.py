"""Byte-for-byte interoperability with what etcdctl (and so Go's client) writes and reads."""

from __future__ import annotations

import pytest

from aiodiscovery import Endpoint, EndpointManager, EtcdClient
from aiodiscovery.testing import EtcdServer

pytestmark = pytest.mark.anyio


async def test_values_written_by_etcdctl_are_listed(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    # The etcd documentation's seed commands, verbatim apart from the service name.
    etcd.etcdctl("put", f"{service}/1.2.3.4", '{"Addr":"1.2.3.4","Metadata":"..."}')
    etcd.etcdctl("put", f"{service}/1.2.3.5", '{"Op":0,"Addr":"1.2.3.5:50051","Metadata":null}')
    em = EndpointManager(client, service)
    assert await em.list_endpoints() == {
        f"{service}/1.2.3.4": Endpoint("1.2.3.4", "..."),
        f"{service}/1.2.3.5": Endpoint("1.2.3.5:50051"),
    }
    etcd.etcdctl("del", f"{service}/1.2.3.4")
    assert list(await em.list_endpoints()) == [f"{service}/1.2.3.5"]


async def test_what_we_write_etcdctl_reads_byte_for_byte(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/e1", Endpoint("1.2.3.4:50051"))
    await em.add_endpoint(f"{service}/e2", Endpoint("1.2.3.5:50051", {"weight": 3, "az": "a<b"}))
    out = etcd.etcdctl("get", "--prefix", f"{service}/")
    assert out.splitlines() == [
        f"{service}/e1",
        '{"Op":0,"Addr":"1.2.3.4:50051","Metadata":null}',
        f"{service}/e2",
        '{"Op":0,"Addr":"1.2.3.5:50051","Metadata":{"az":"a\\u003cb","weight":3}}',
    ]


async def test_lease_granted_by_etcdctl_is_honoured(
    etcd: EtcdServer, client: EtcdClient, service: str
) -> None:
    lease_hex = etcd.etcdctl("lease", "grant", "30").split()[1]
    em = EndpointManager(client, service)
    await em.add_endpoint(f"{service}/leased", Endpoint("a:1"), lease=int(lease_hex, 16))
    keys = etcd.etcdctl("lease", "timetolive", lease_hex, "--keys")
    assert f"{service}/leased" in keys
    etcd.etcdctl("lease", "revoke", lease_hex)
    assert await em.list_endpoints() == {}

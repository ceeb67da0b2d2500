"""TLS, mutual TLS and authentication to a real etcd: connect(), manager, watch, registrar."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import grpc
import pytest
from aetcd import rpc

import aiodiscovery
from aiodiscovery import (
    AuthenticationError,
    Endpoint,
    EndpointManager,
    EtcdClient,
    EtcdUnavailableError,
    Registrar,
    Watcher,
)
from aiodiscovery._etcd.auth import is_auth_cancel, is_token_error, parse_user
from aiodiscovery._etcd.connect import reauthenticate
from aiodiscovery._etcd.kv import prefix_range_end
from aiodiscovery.testing import EtcdCluster, EtcdServer, TcpProxy, TLSFiles, free_port

from .helpers import eventually, until, until_accepted

pytestmark = pytest.mark.anyio

PASSWORD = "s3cr3t-Pa55word"  # distinctive, so a leak anywhere is easy to find
T = TypeVar("T")


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True, client_cert_auth=True) as server:
        yield server


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """TLS, authentication on, simple tokens that expire after one idle second."""
    with EtcdServer(tls=True, extra_args=["--auth-token-ttl=1"]) as server:
        server.enable_auth(password=PASSWORD)
        yield server


@pytest.fixture(scope="module")
def mtls_auth_etcd() -> Iterator[EtcdServer]:
    """Client certificates required, authentication on, one-second tokens."""
    with EtcdServer(client_cert_auth=True, extra_args=["--auth-token-ttl=1"]) as server:
        server.enable_auth(password=PASSWORD)
        yield server


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A second, unrelated CA with its own certificates."""
    return TLSFiles.generate(tmp_path_factory.mktemp("other-pki"))


async def connect_as_root(etcd: EtcdServer, url: str | None = None) -> EtcdClient:
    return await aiodiscovery.connect(
        url or etcd.url, **etcd.tls_kwargs(), username="root", password=PASSWORD
    )


async def connect_plain(url: str, timeout: float) -> EtcdClient:
    """``connect()`` as root over plaintext ``http://``: its password warning is expected."""
    with pytest.warns(UserWarning, match="plaintext"):
        return await aiodiscovery.connect(url, username="root", password=PASSWORD, timeout=timeout)


@contextlib.asynccontextmanager
async def root_clients_through_proxy(
    etcd: EtcdServer,
) -> AsyncIterator[tuple[EtcdClient, TcpProxy, EtcdClient]]:
    """A writer straight to ``etcd``, a proxy to it, and a client through the proxy."""
    writer = await connect_as_root(etcd)
    try:
        async with TcpProxy(etcd.client_port) as proxy:
            client = await connect_as_root(etcd, url=f"https://127.0.0.1:{proxy.port}")
            try:
                yield writer, proxy, client
            finally:
                await client.close()
    finally:
        await writer.close()


async def until_token_renewed(client: EtcdClient, call: Callable[[], Awaitable[T]]) -> T:
    """Stay idle past the token TTL, then ``call()`` (it must succeed); repeat until the client
    reports it renewed a rejected token. etcd drops an idle simple token one TTL (1 s) after its
    last use, at its next 1 s tick: 2.1 s idle is nearly always enough, the loop covers a late
    tick."""
    before = client.statistics().retried_calls
    with anyio.fail_after(20):
        while True:
            await anyio.sleep(2.1)
            result = await call()
            if client.statistics().retried_calls > before:
                return result


async def wait_token_expired(etcd: EtcdServer, client: EtcdClient) -> None:
    """Return once etcd no longer accepts ``client``'s current token, without the client.

    A probe that finds the token still valid renews it (etcd's TTL counts from the last use),
    so each probe comes after a full idle period.
    """
    token = client._auth.token if client._auth is not None else None
    assert token is not None
    target = f"127.0.0.1:{etcd.client_port}"
    files = etcd.tls_files
    if files is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(
                files.ca_path.read_bytes(),
                files.client_key_path.read_bytes() if etcd.client_cert_auth else None,
                files.client_cert_path.read_bytes() if etcd.client_cert_auth else None,
            ),
        )
    async with channel:
        with anyio.fail_after(20):
            while True:
                await anyio.sleep(2.1)
                try:
                    await rpc.KVStub(channel).Range(
                        rpc.RangeRequest(key=b"probe"), metadata=(("token", token),), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        return
                    raise


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert "PRIVATE KEY" not in text


# -- arguments ------------------------------------------------------------------------------------


async def test_cert_and_key_go_together(mtls_etcd: EtcdServer) -> None:
    with pytest.raises(ValueError, match="key= was given without cert="):
        EtcdClient(mtls_etcd.url, key=mtls_etcd.client_key_path)
    with pytest.raises(ValueError, match="cert= was given without key="):
        EtcdClient(mtls_etcd.url, cert=mtls_etcd.client_cert_path)


async def test_missing_or_bad_files_are_named_not_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(FileNotFoundError, match="CA certificate") as info:
        EtcdClient("https://127.0.0.1:2379", ca=missing)
    assert str(missing) in str(info.value)

    not_pem = tmp_path / "key.txt"
    not_pem.write_text("SUPER-SECRET-KEY-MATERIAL")
    with pytest.raises(ValueError, match="not in PEM format") as bad:
        EtcdClient("https://127.0.0.1:2379", cert=not_pem, key=not_pem)
    assert str(not_pem) in str(bad.value)
    assert "SUPER-SECRET" not in str(bad.value)
    with pytest.raises(ValueError, match="given as bytes") as raw:
        EtcdClient("https://127.0.0.1:2379", ca=b"SUPER-SECRET")
    assert "SUPER-SECRET" not in str(raw.value)

    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(IsADirectoryError, match="client key"):
        EtcdClient("https://127.0.0.1:2379", cert=b"-----BEGIN CERTIFICATE-----", key=directory)


async def test_tls_options_need_https_and_credentials_come_in_pairs(tls_etcd: EtcdServer) -> None:
    with pytest.raises(ValueError, match=r"TLS options \(ca=\) need https://"):
        EtcdClient("http://127.0.0.1:2379", ca=tls_etcd.ca_path)
    with pytest.raises(ValueError, match="server_name"):
        EtcdClient("http://127.0.0.1:2379", server_name="etcd")
    with pytest.raises(ValueError, match="both username= and password="):
        EtcdClient(tls_etcd.url, username="root")
    with pytest.raises(ValueError, match="both username= and password="):
        EtcdClient(tls_etcd.url, password=PASSWORD)


async def test_parse_user_like_etcdctl() -> None:
    assert parse_user("root:pa:ss") == ("root", "pa:ss")
    assert parse_user("root") == ("root", None)
    assert parse_user("root:") == ("root", "")
    with pytest.raises(ValueError, match="must not be empty"):
        parse_user(":pw")


async def test_error_classification() -> None:
    assert is_token_error("etcdserver: invalid auth token")
    assert is_token_error(aiodiscovery.EtcdError("x", code="UNAUTHENTICATED"))
    assert not is_token_error("etcdserver: authentication failed, invalid user ID or password")
    assert is_auth_cancel("rpc error: code = PermissionDenied desc = etcdserver: permission denied")
    assert not is_auth_cancel("mvcc: required revision has been compacted")


async def test_repr_shows_tls_and_user_only(mtls_etcd: EtcdServer) -> None:
    client = EtcdClient(
        mtls_etcd.url,
        ca=mtls_etcd.ca_path.read_bytes(),
        cert=mtls_etcd.client_cert_path,
        key=mtls_etcd.client_key_path.read_bytes(),
        username="alice",
        password=PASSWORD,
    )
    assert repr(client) == f"<EtcdClient {mtls_etcd.url} closed tls client-cert user='alice'>"
    assert_no_secret(repr(vars(client)))


# -- TLS ------------------------------------------------------------------------------------------


async def test_plaintext_client_is_refused_by_a_tls_server(tls_etcd: EtcdServer) -> None:
    plain = f"http://127.0.0.1:{tls_etcd.client_port}"
    with pytest.raises(EtcdUnavailableError, match=r"if it serves TLS, use https://"):
        await aiodiscovery.connect(plain, timeout=1)


async def test_tls_client_to_a_plaintext_server_is_explained(etcd: EtcdServer) -> None:
    with pytest.raises(EtcdUnavailableError, match=r"does not speak TLS there \(use http://"):
        await aiodiscovery.connect(f"https://127.0.0.1:{etcd.client_port}", timeout=1)


async def test_tls_connect_manager_and_repr(tls_etcd: EtcdServer, service: str) -> None:
    client = await aiodiscovery.connect(tls_etcd.url, ca=tls_etcd.ca_path)
    try:
        assert repr(client) == f"<EtcdClient {tls_etcd.url} connected tls>"
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/e1", Endpoint("10.0.0.1:1", {"zone": "a"}))
        assert await em.list_endpoints() == {f"{service}/e1": Endpoint("10.0.0.1:1", {"zone": "a"})}
        # etcdctl (with --cacert) reads what we wrote, in Go's format.
        out = tls_etcd.etcdctl("get", f"{service}/e1", "--print-value-only")
        assert out.strip() == '{"Op":0,"Addr":"10.0.0.1:1","Metadata":{"zone":"a"}}'
    finally:
        await client.close()


async def test_ca_as_bytes_and_server_name(tls_etcd: EtcdServer) -> None:
    ca = tls_etcd.ca_path.read_bytes()
    client = await aiodiscovery.connect(tls_etcd.url, ca=ca, server_name="localhost")
    try:
        await client.put(b"tls-bytes", b"v")
    finally:
        await client.close()
    with pytest.raises(EtcdUnavailableError, match="not valid for the name"):
        await aiodiscovery.connect(tls_etcd.url, ca=ca, server_name="etcd.example.com", timeout=1)


async def test_wrong_ca_fails_clearly(tls_etcd: EtcdServer, other_pki: TLSFiles) -> None:
    with pytest.raises(EtcdUnavailableError, match="not signed by the trusted CA") as info:
        await aiodiscovery.connect(tls_etcd.url, ca=other_pki.ca_path, timeout=1)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_mtls_works_and_needs_the_right_client_certificate(
    mtls_etcd: EtcdServer, other_pki: TLSFiles, service: str
) -> None:
    client = await aiodiscovery.connect(mtls_etcd.url, **mtls_etcd.tls_kwargs())
    try:
        assert repr(client).endswith("connected tls client-cert>")
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/e1", Endpoint("10.0.0.2:1"))
        assert list(await em.list_endpoints()) == [f"{service}/e1"]
    finally:
        await client.close()
    with pytest.raises(EtcdUnavailableError, match="refused the client certificate"):
        await aiodiscovery.connect(mtls_etcd.url, ca=mtls_etcd.ca_path, timeout=1)
    with pytest.raises(EtcdUnavailableError, match="refused the client certificate"):
        await aiodiscovery.connect(
            mtls_etcd.url,
            ca=mtls_etcd.ca_path,
            cert=other_pki.client_cert_path,
            key=other_pki.client_key_path,
            timeout=1,
        )


async def test_several_https_urls_fail_over(tls_etcd: EtcdServer) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    client = await aiodiscovery.connect([dead, tls_etcd.url], ca=tls_etcd.ca_path, timeout=5)
    try:
        await client.put(b"tls-failover", b"v")
    finally:
        await client.close()


async def test_tls_cluster_with_client_certificates(service: str) -> None:
    async with EtcdCluster(3, client_cert_auth=True) as cluster:
        assert cluster.urls.startswith("https://")
        assert cluster.leader() is not None  # etcdctl speaks mTLS to every member
        client = await aiodiscovery.connect(cluster.urls, **cluster.tls_kwargs())
        try:
            em = EndpointManager(client, service)
            await em.add_endpoint(f"{service}/before", Endpoint("a:1"))
            cluster.members[0].kill()
            await until_accepted(
                lambda: em.add_endpoint(f"{service}/after", Endpoint("b:1")), timeout=20
            )
            assert set(await em.list_endpoints()) == {f"{service}/before", f"{service}/after"}
        finally:
            await client.close()


async def test_watcher_and_registrar_over_mtls(mtls_etcd: EtcdServer, service: str) -> None:
    client = await aiodiscovery.connect(mtls_etcd.url, **mtls_etcd.tls_kwargs())
    try:
        async with Watcher(client, service) as watcher:
            assert dict(watcher.snapshot) == {}
            async with Registrar(client, service, Endpoint("10.0.0.3:50051"), ttl=5):
                with anyio.fail_after(10):
                    while list(watcher.snapshot) != [f"{service}/10.0.0.3:50051"]:
                        await watcher.wait_for_change()
            with anyio.fail_after(10):
                while dict(watcher.snapshot):
                    await watcher.wait_for_change()
    finally:
        await client.close()


# -- authentication -------------------------------------------------------------------------------


async def test_wrong_password_fails_clearly_and_leaks_nothing(
    auth_etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await aiodiscovery.connect(
            auth_etcd.url, ca=auth_etcd.ca_path, username="root", password=PASSWORD + "x"
        )
    error = info.value
    assert "user 'root'" in str(error)
    assert "authentication failed" in str(error)
    assert error.username == "root"
    assert isinstance(error, aiodiscovery.EtcdError)
    rendered = "".join(traceback.format_exception(error))
    assert_no_secret(str(error), repr(error), repr(error.args), rendered, caplog.text)
    assert (PASSWORD + "x") not in rendered + caplog.text


async def test_no_credentials_on_an_auth_cluster_says_what_to_do(
    auth_etcd: EtcdServer, service: str
) -> None:
    client = await aiodiscovery.connect(auth_etcd.url, ca=auth_etcd.ca_path)
    try:
        with pytest.raises(AuthenticationError, match="pass username= and password="):
            await EndpointManager(client, service).list_endpoints()
    finally:
        await client.close()


async def test_credentials_without_auth_on_the_server_still_work(
    tls_etcd: EtcdServer, service: str
) -> None:
    client = await connect_as_root(tls_etcd)
    try:
        assert client.statistics().authentications == 0
        await EndpointManager(client, service).add_endpoint(f"{service}/e", Endpoint("c:1"))
    finally:
        await client.close()


async def test_expired_token_is_renewed_for_manager_calls(
    auth_etcd: EtcdServer, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await connect_as_root(auth_etcd)
    try:
        assert repr(client) == f"<EtcdClient {auth_etcd.url} connected tls user='root'>"
        # What streams are opened with: the current token, read anew each time.
        first_metadata = client.metadata
        assert first_metadata is not None and first_metadata[0][0] == "token"
        assert client.statistics().authentications == 1
        em = EndpointManager(client, service)
        await em.add_endpoint(f"{service}/e1", Endpoint("10.0.0.4:1"))

        async def write_and_list() -> dict[str, Endpoint]:
            await em.add_endpoint(f"{service}/e2", Endpoint("10.0.0.5:1"))
            return await em.list_endpoints()

        listed = await until_token_renewed(client, write_and_list)
        assert set(listed) == {f"{service}/e1", f"{service}/e2"}
        stats = client.statistics()
        assert stats.token_rejections >= 1 and stats.authentications >= 2
        assert client.metadata not in (None, first_metadata)
        # aetcd's own methods go through the same channel, hence the same renewal.
        await until_token_renewed(client, lambda: client.get(b"anything"))
        assert_no_secret(caplog.text, repr(client), repr(vars(client)))
        assert client._auth is not None and client._auth.token is not None
        assert client._auth.token not in caplog.text + repr(client) + repr(vars(client))
    finally:
        await client.close()


async def test_concurrent_rejections_share_one_authenticate(
    auth_etcd: EtcdServer, service: str
) -> None:
    client = await connect_as_root(auth_etcd)
    try:
        em = EndpointManager(client, service)
        await em.list_endpoints()
        results: list[Any] = []

        async def one() -> None:
            results.append(await em.list_endpoints())

        with anyio.fail_after(20):
            while True:
                before = client.statistics()
                await anyio.sleep(2.1)  # idle past the TTL (see until_token_renewed)
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(one)
                after = client.statistics()
                if after.retried_calls > before.retried_calls:
                    break
        assert all(r == {} for r in results)
        # Eight calls refused for the same token, one Authenticate, eight retries.
        assert after.authentications == before.authentications + 1
        assert after.retried_calls - before.retried_calls == 8

        before = client.statistics()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(client.reauthenticate)
        assert client.statistics().authentications == before.authentications + 1
        assert await reauthenticate(client) is True
    finally:
        await client.close()
    anonymous = await aiodiscovery.connect(auth_etcd.url, ca=auth_etcd.ca_path)
    try:
        assert await reauthenticate(anonymous) is False
    finally:
        await anonymous.close()


async def test_password_change_surfaces_as_authentication_error(
    service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with EtcdServer(extra_args=["--auth-token-ttl=1"]) as etcd:
        etcd.enable_auth(password=PASSWORD)
        client = await aiodiscovery.connect(etcd.url, username="root", password=PASSWORD)
        try:
            em = EndpointManager(client, service)
            await em.list_endpoints()
            await rpc.AuthStub(client.channel).UserChangePassword(
                rpc.AuthUserChangePasswordRequest(name="root", password="another-password")
            )
            await wait_token_expired(etcd, client)
            with pytest.raises(AuthenticationError, match="credentials of user 'root'") as info:
                await em.list_endpoints()
            assert_no_secret(str(info.value), caplog.text)
            assert "another-password" not in str(info.value) + caplog.text
        finally:
            await client.close()


async def test_stream_owner_hook_renews_an_expired_token_mid_watch(
    mtls_auth_etcd: EtcdServer, service: str
) -> None:
    """What a stream owner does: watch with ``client.metadata``; when etcd cancels a re-created
    watch for its token, call ``reauthenticate(client, reason)`` and watch again from the last
    revision. Nothing is lost."""
    etcd = mtls_auth_etcd
    prefix = f"{service}/".encode()
    writer = await connect_as_root(etcd)
    async with TcpProxy(etcd.client_port) as proxy:
        client = await connect_as_root(etcd, url=f"https://127.0.0.1:{proxy.port}")
        try:

            async def watch_from(revision: int) -> tuple[Any, Any]:
                call = rpc.WatchStub(client.channel).Watch(
                    metadata=client.metadata, wait_for_ready=True
                )
                create = rpc.WatchCreateRequest(
                    key=prefix, range_end=prefix_range_end(prefix), start_revision=revision
                )
                await call.write(rpc.WatchRequest(create_request=create))
                return call, await call.read()

            first = await writer.put(prefix + b"e1", b"1")
            call, created = await watch_from(first.header.revision + 1)
            assert created.created and not created.canceled
            put = await writer.put(prefix + b"e2", b"2")
            reply = await call.read()
            assert [(e.kv.key, e.type) for e in reply.events] == [(prefix + b"e2", rpc.Event.PUT)]
            last = put.header.revision

            proxy.cut()  # the stream breaks; meanwhile the world changes
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
            await writer.delete(prefix + b"e1")
            await writer.put(prefix + b"e3", b"3")
            await wait_token_expired(etcd, client)
            proxy.heal()

            cancels = []
            with anyio.fail_after(15):
                while True:
                    call, created = await watch_from(last + 1)
                    if not created.canceled:
                        break
                    cancels.append(created.cancel_reason)
                    call.cancel()
                    assert await reauthenticate(client, created.cancel_reason)
                events = []
                while len(events) < 2:
                    reply = await call.read()
                    events += [(e.kv.key, e.type) for e in reply.events]
            call.cancel()
            assert events == [(prefix + b"e1", rpc.Event.DELETE), (prefix + b"e3", rpc.Event.PUT)]
            assert len(cancels) == 1 and is_auth_cancel(cancels[0])
            assert client.statistics().authentications == 2
        finally:
            await client.close()
            await writer.close()


async def test_watcher_renews_an_expired_token_mid_watch_with_nothing_lost(
    mtls_auth_etcd: EtcdServer, service: str
) -> None:
    etcd = mtls_auth_etcd
    async with root_clients_through_proxy(etcd) as (writer, proxy, client):
        em = EndpointManager(writer, service)
        await em.add_endpoint(f"{service}/e1", Endpoint("10.0.1.1:1"))
        async with Watcher(client, service) as watcher:
            assert list(watcher.snapshot) == [f"{service}/e1"]
            proxy.cut()
            # Changes the watcher must not miss, made while it is cut off.
            await em.update(
                [
                    aiodiscovery.Update.delete(f"{service}/e1"),
                    aiodiscovery.Update.add(f"{service}/e2", Endpoint("10.0.1.2:1")),
                ]
            )
            await em.add_endpoint(f"{service}/e3", Endpoint("10.0.1.3:1"))
            await wait_token_expired(etcd, client)
            proxy.heal()
            with anyio.fail_after(15):
                while set(watcher.snapshot) != {f"{service}/e2", f"{service}/e3"}:
                    await watcher.wait_for_change()
            assert client.statistics().authentications >= 2


async def test_a_watch_renews_an_expired_token_again_and_again(
    mtls_auth_etcd: EtcdServer, service: str
) -> None:
    # Seen in the soak (--auth, 1 s tokens): the watch remembered the token its last renewal gave
    # and took a later refusal of that same token, long expired, on a new stream for a real
    # denial; the watch, and the pool on it, stopped for good.
    etcd = mtls_auth_etcd
    async with root_clients_through_proxy(etcd) as (writer, proxy, client):
        em = EndpointManager(writer, service)
        async with Watcher(client, service) as watcher:
            for i in range(3):
                proxy.cut()
                await em.add_endpoint(f"{service}/e{i}", Endpoint(f"10.0.2.{i}:1"))
                await wait_token_expired(etcd, client)
                proxy.heal()
                with anyio.fail_after(15):
                    while f"{service}/e{i}" not in watcher.snapshot:
                        await watcher.wait_for_change()
            assert watcher.statistics().reconnects >= 3


async def test_a_watch_whose_token_renewal_fails_for_a_while_keeps_trying() -> None:
    # Seen in the soak (--auth, 1 s tokens): a watch refused for its expired token could not
    # renew it at once ("etcdserver: leader changed") and took that for a real denial. Here the
    # member the client uses gets its raft traffic 1.2 s late: it still has a leader and refuses
    # the expired token itself, but a new token (Authenticate goes through raft) comes later
    # than the client's 1 s timeout, until the latency goes.
    async with EtcdCluster(
        3, fast=False, peer_proxies=True, extra_args=["--auth-token-ttl=1"]
    ) as cluster:
        await anyio.to_thread.run_sync(cluster.enable_auth, "root", PASSWORD)
        leader = await cluster.leader_async()
        lonely = next(m for m in cluster.members if m is not leader)
        slow = cluster.peer_proxies[cluster.members.index(lonely)]
        writer = await connect_plain(leader.url, timeout=5)
        async with TcpProxy(lonely.client_port) as proxy:
            client = await connect_plain(proxy.url, timeout=1.0)
            try:
                em = EndpointManager(writer, "slow/svc")
                async with Watcher(client, "slow/svc") as watcher:
                    proxy.cut()
                    await wait_token_expired(lonely, client)
                    slow.latency = 1.2
                    refused = client.statistics().token_rejections
                    proxy.heal()
                    # Refused, and no new token in time: the watch must wait, not give up.
                    await until(
                        lambda: client.statistics().token_rejections >= refused + 2, timeout=30
                    )
                    slow.latency = 0.0
                    await em.add_endpoint("slow/svc/e1", Endpoint("10.0.3.1:1"))
                    with anyio.fail_after(30):
                        while "slow/svc/e1" not in watcher.snapshot:
                            await watcher.wait_for_change()
            finally:
                await client.close()
                await writer.close()


async def test_a_registrar_writes_its_key_back_when_authenticate_is_slow(service: str) -> None:
    # Seen in the soak (--auth, 1 s tokens, TTL 2): after an operator deleted the key, every put
    # was refused for the expired token, and the renewal each refusal started was given only
    # what was left of that put's 0.67 s, while Authenticate (bcrypt, then raft) took longer:
    # the key stayed away for 11 to 43 s. A bcrypt cost of 12 makes Authenticate that slow here.
    async with EtcdServer(extra_args=["--auth-token-ttl=1", "--bcrypt-cost=12"]) as etcd:
        await anyio.to_thread.run_sync(etcd.enable_auth, "root", PASSWORD)
        client = await connect_plain(etcd.url, timeout=15)
        try:
            async with Registrar(client, service, "10.0.4.1:1", ttl=2) as reg:
                await wait_token_expired(etcd, client)
                await etcd.etcdctl_async("del", reg.key)
                with anyio.fail_after(30):
                    await until(lambda: reg.statistics().re_registrations >= 1, timeout=30)
                assert (await etcd.etcdctl_async("get", reg.key, "--print-value-only")).strip()
        finally:
            await client.close()


async def test_registrar_streams_recover_from_an_expired_token(
    mtls_auth_etcd: EtcdServer, service: str
) -> None:
    """The registrar's streams break, the token expires meanwhile: its keep-alive and key watch
    come back (a unary read renews the token first) and it still defends its key."""
    etcd = mtls_auth_etcd
    writer = await connect_as_root(etcd)
    async with TcpProxy(etcd.client_port) as proxy:
        client = await connect_as_root(etcd, url=f"https://127.0.0.1:{proxy.port}")
        em = EndpointManager(writer, service)
        try:
            async with Registrar(client, service, Endpoint("10.0.2.1:1"), ttl=10) as registrar:
                assert list(await em.list_endpoints()) == [registrar.key]
                proxy.cut()
                await wait_token_expired(etcd, client)
                proxy.heal()
                # Someone deletes the key: the registrar must see it and put it back.
                await em.delete_endpoint(registrar.key)
                await eventually(em.list_endpoints, lambda found: list(found) == [registrar.key])
                assert registrar.registered
                assert client.statistics().authentications >= 2
            # Leaving revoked the lease, which took the key with it.
            assert await em.list_endpoints() == {}
        finally:
            await client.close()
            await writer.close()


async def test_pem_strings_are_taken_as_data(tls_etcd: EtcdServer) -> None:
    client = EtcdClient(tls_etcd.url, ca=tls_etcd.ca_path.read_text())
    assert client.tls
    assert os.fspath(tls_etcd.ca_path) not in repr(client)

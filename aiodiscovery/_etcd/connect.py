"""connect(): a client whose first member answered, authenticated; and the stream owners' hook."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import grpc
from aetcd import rpc

from .._codec.endpoint import DEFAULT_METADATA_BUDGET
from .._exceptions import EtcdUnavailableError
from .client import DEFAULT_TIMEOUT, EtcdClient
from .members import DEFAULT_HEARTBEAT, Member, MemberSet
from .tls import PemSource, diagnose
from .urls import DEFAULT_URL

__all__ = ["connect", "reauthenticate"]


async def connect(
    urls: str | Iterable[str] = DEFAULT_URL,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    options: Iterable[tuple[str, Any]] = (),
    ca: PemSource | None = None,
    cert: PemSource | None = None,
    key: PemSource | None = None,
    server_name: str | None = None,
    username: str | None = None,
    password: str | None = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    metadata_budget: int | None = DEFAULT_METADATA_BUDGET,
) -> EtcdClient:
    """Return a connected etcd client, the counterpart of Go's ``clientv3.New``.

    ``urls`` is one URL, a comma-separated string or a list; requests go to one member and move
    to another when it dies or stops answering. ``timeout`` bounds the wait for a first member
    to answer and every unary request later on. ``heartbeat`` (seconds) is how long a member that
    a watch depends on may stay silent before it is probed, and how long the probe may take: a
    frozen member is left within about twice that.

    ``https://`` URLs use TLS, like ``etcdctl``: ``ca`` (``--cacert``) is the CA bundle that
    signed etcd's certificate (default: the system's trust store); ``cert`` and ``key``
    (``--cert``, ``--key``) are a client certificate for etcd's ``--client-cert-auth``. Each is a
    file path or the PEM data. Each member's certificate is checked against its own URL's host,
    or against ``server_name`` when given. ``options`` go to every member's gRPC channel.

    ``username`` and ``password`` (``--user name:password``): the client authenticates now and
    renews its token whenever etcd rejects it. Over plaintext ``http://`` a warning says that
    the password travels unencrypted.

    ``metadata_budget`` (bytes, default 64 KiB) bounds what one endpoint read from etcd may
    hold in memory, in every watch, pool and listing of this client: its address and metadata
    may take the budget or 4 times the stored value's size, whichever is more. A value beyond
    is skipped like any bad value (counted in ``statistics().bad_values``, its key logged).
    ``None`` removes the bound, as in Go's client: registry data is untrusted, keep one.

    Raises :class:`EtcdUnavailableError` if no member answers within ``timeout`` (naming the
    likely cause: a TLS mismatch, an untrusted certificate, ...), :class:`AuthenticationError`
    if etcd rejects the user name or password, and :class:`ValueError` or :class:`OSError` for
    bad arguments or unreadable certificate files.
    """
    # Certificate files are read off the event loop: a slow disk must not stall other tasks.
    client = await anyio.to_thread.run_sync(
        lambda: EtcdClient(
            urls,
            timeout=timeout,
            options=options,
            ca=ca,
            cert=cert,
            key=key,
            server_name=server_name,
            username=username,
            password=password,
            heartbeat=heartbeat,
            metadata_budget=metadata_budget,
        )
    )
    client._warn_plaintext(stacklevel=2)
    try:
        await client.connect()
        try:
            with anyio.fail_after(timeout):
                client.members.use(await _first_ready(client.members))
        except TimeoutError:
            raise await _unreachable(client, timeout) from None
        await client.authenticate()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await client.close()
        raise
    return client


async def _first_ready(members: MemberSet) -> Member:
    """The first member, in URL order, that is ready once any member is."""
    first: list[Member] = []
    async with anyio.create_task_group() as task_group:

        async def ready(member: Member) -> None:
            await member.channel.channel_ready()
            first.append(member)
            task_group.cancel_scope.cancel()

        for member in members.members:
            task_group.start_soon(ready, member)
    ready_now = [m for m in members.members if m.state() is grpc.ChannelConnectivity.READY]
    chosen = ready_now[0] if ready_now else first[0]
    members.heard(chosen)
    return chosen


async def _unreachable(client: EtcdClient, timeout: float) -> EtcdUnavailableError:
    """The error for members that never got ready, with gRPC's last connection error."""
    details = ""
    for member in client.members.members:
        try:
            # Fails at once on a channel in TRANSIENT_FAILURE, with the last connection error.
            await member.maintenance.Status(rpc.StatusRequest(), timeout=min(1.0, timeout))
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            break
    message = f"cannot reach etcd at {', '.join(client.urls)} within {timeout:g} s"
    hint = diagnose(details, client.tls)
    if details:
        message += f": {details}"
    if hint:
        message += f" ({hint})"
    return EtcdUnavailableError(message, code="UNAVAILABLE", details=details)


async def reauthenticate(client: object, error: object = None) -> bool:
    """The hook for owners of their own streams: :meth:`EtcdClient.reauthenticate`.

    Returns ``False`` at once for anything that is not an :class:`EtcdClient` with a user name.
    """
    if not isinstance(client, EtcdClient):
        return False
    return await client.reauthenticate(error)

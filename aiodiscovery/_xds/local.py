"""In-process xDS: grpc's own ``xds:///`` channel, backed by a control plane in this process.

grpc core (1.85) reads its xDS bootstrap from the environment each time it creates an xDS client:
one per channel target, kept while a channel on that target lives. The environment is one for the
whole process, so there is one in-process :class:`XdsServer` per process, serving every service
any :func:`xds_channel` asked for, each from the etcd client it was asked with; the bootstrap
names it, and its port is kept for the process's life (a new event loop gets a new server on the
same port, so a bootstrap grpc still holds stays true). A process whose environment already names
another control plane (``GRPC_XDS_BOOTSTRAP`` or a different ``GRPC_XDS_BOOTSTRAP_CONFIG``)
cannot have one: replacing it would move that process's other xDS channels here, so that is an
error, not a silent detour.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._codec.endpoint import parse_target
from .._etcd.client import EtcdClient
from .._naming.watcher import Watcher
from .policy import OutlierSettings, XdsPolicy
from .server import XdsServer

__all__ = ["BOOTSTRAP_ENV", "local_xds_server", "xds_channel"]

BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"
_FILE_ENV = "GRPC_XDS_BOOTSTRAP"
# The pool's policies that grpc implements too, by the xDS name.
_POLICIES = {"round_robin": "round_robin", "pick_first": "pick_first"}


class _Local:
    server: XdsServer | None = None
    loop: asyncio.AbstractEventLoop | None = None
    port = 0
    # The bootstrap this module wrote, to tell it from someone else's.
    document: str | None = None
    # Two first channels at once must not start two servers: one would lose the bootstrap.
    lock: asyncio.Lock | None = None
    lock_loop: asyncio.AbstractEventLoop | None = None


async def local_xds_server() -> XdsServer:
    """The process's in-process xDS server (started on first use, on this event loop).

    Close it with ``await server.close()`` when the process is done with xDS; the next
    :func:`xds_channel` starts it again on the same port.
    """
    loop = asyncio.get_running_loop()
    if _Local.lock is None or _Local.lock_loop is not loop:
        _Local.lock, _Local.lock_loop = asyncio.Lock(), loop
    async with _Local.lock:
        return await _start_local(loop)


async def _start_local(loop: asyncio.AbstractEventLoop) -> XdsServer:
    server = _Local.server
    if server is not None and server.running and _Local.loop is loop:
        return server
    _check_bootstrap()
    server = XdsServer(listen=f"127.0.0.1:{_Local.port}", policy=XdsPolicy())
    if _Local.server is not None:
        # Keep what was configured: the services and their clients.
        for name, (client, policy) in _Local.server.services.items():
            server.serve(name, client=client, policy=policy)
    await server.start()
    _Local.server, _Local.loop, _Local.port = server, loop, server.port
    document = server.bootstrap(node_id=f"aiodiscovery-{os.getpid()}")
    os.environ[BOOTSTRAP_ENV] = _Local.document = document
    return server


def _check_bootstrap() -> None:
    current = os.environ.get(BOOTSTRAP_ENV)
    if os.environ.get(_FILE_ENV) or (current is not None and current != _Local.document):
        raise RuntimeError(
            f"this process's gRPC xDS bootstrap already names another control plane "
            f"({_FILE_ENV} or {BOOTSTRAP_ENV} is set), and the variable is one for the whole "
            "process: engine='xds' will not replace it. Unset it, or run aiodiscovery "
            "xds-server and point that bootstrap at it"
        )


def _policy(
    pool_policy: str | Callable[[], Any],
    outlier_detection: OutlierSettings | None,
    xds_policy: XdsPolicy | None,
) -> XdsPolicy | None:
    if xds_policy is not None:
        if pool_policy != "round_robin" or outlier_detection is not None:
            raise ValueError("give either xds_policy or policy/outlier_detection, not both")
        return xds_policy
    if not isinstance(pool_policy, str) or pool_policy not in _POLICIES:
        raise ValueError(
            f"policy {pool_policy!r} is the pool's; with engine='xds' it is one of "
            f"{', '.join(_POLICIES)}, or pass xds_policy=XdsPolicy(...) (ring_hash, retries...)"
        )
    if pool_policy == "round_robin" and outlier_detection is None:
        return None
    return XdsPolicy(lb_policy=_POLICIES[pool_policy], outlier_detection=outlier_detection)


async def xds_channel(
    client: EtcdClient,
    target: str,
    *,
    pool_policy: str | Callable[[], Any] = "round_robin",
    outlier_detection: OutlierSettings | None = None,
    xds_policy: XdsPolicy | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Iterable[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    compression: grpc.Compression | None = None,
    start_timeout: float | None = None,
    refused: Sequence[str] = (),
) -> grpc.aio.Channel:
    """``resolve(client, target, engine="xds")``: grpc's own channel on ``xds:///<service>``.

    The service is served by the process's in-process :class:`XdsServer` from ``client``;
    returns once etcd has listed its prefix (so an unreachable etcd fails here, as ``resolve``
    does). ``refused`` names options of ``resolve`` that only the Python pool has.
    """
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: only the Python pool has that; with engine='xds' grpc "
            "balances (see XdsPolicy for what it can do)"
        )
    policy = _policy(pool_policy, outlier_detection, xds_policy)
    name = parse_target(target).removesuffix("/")
    async with Watcher(client, target, start_timeout=start_timeout):
        pass
    server = await local_xds_server()
    current = server.services.get(name, (None, None))[0]
    if current is not None and current is not client and current.connected:
        raise ValueError(
            f"service {name!r} is already served over xDS from another etcd client in this "
            "process: a grpc process has one xDS control plane, and one name means one service"
        )
    server.serve(name, client=client, policy=policy)
    uri = f"xds:///{name}"
    options = list(options)
    if credentials is None:
        return grpc.aio.insecure_channel(
            uri, options=options, compression=compression, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        uri, credentials, options=options, compression=compression, interceptors=interceptors
    )

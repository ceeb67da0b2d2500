"""Connecting to etcd, and the few typed etcd calls the rest of the package builds on.

aetcd's :class:`aetcd.Client` dials exactly one ``host:port``. :func:`connect` returns an
:class:`EtcdClient`, an ``aetcd.Client`` whose channel spans every given member, so that gRPC fails
over between them, with keep-alive pings that notice a member that stopped answering.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aetcd
import anyio
import grpc
from aetcd import rpc

from ._exceptions import EtcdError, EtcdUnavailableError, LeaseNotFoundError

__all__ = [
    "DEFAULT_URL",
    "EtcdClient",
    "KeyValue",
    "connect",
    "etcd_errors",
    "list_prefix",
    "parse_urls",
    "request_timeout",
]

DEFAULT_URL = "http://127.0.0.1:2379"
DEFAULT_TIMEOUT = 5.0
# Range pages: one huge response could pass gRPC's 4 MiB receive limit; pages are read at one
# pinned revision, so the result is still one consistent snapshot.
_PAGE_SIZE = 1000

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Member:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_urls(urls: str | Iterable[str]) -> tuple[str, ...]:
    """Split and validate etcd client URLs (``"http://a:2379,http://b:2379"`` or a list).

    A bare ``host:port`` means ``http://host:port``. Raises :class:`ValueError` naming the bad URL.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    cleaned = tuple(u.strip() for u in items if u.strip())
    if not cleaned:
        raise ValueError("no etcd URL given; pass e.g. 'http://127.0.0.1:2379'")
    result = []
    for url in cleaned:
        full = url if "://" in url else f"http://{url}"
        parts = urlsplit(full)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"etcd URL {url!r} must use http:// or https://")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"etcd URL {url!r} has a bad port: {exc}") from None
        if not parts.hostname or port is None:
            raise ValueError(f"etcd URL {url!r} must name a host and a port, e.g. 127.0.0.1:2379")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"etcd URL {url!r} must not have a path, query or fragment")
        result.append(full)
    schemes = {urlsplit(u).scheme for u in result}
    if len(schemes) > 1:
        raise ValueError(f"etcd URLs mix http and https: {', '.join(result)}")
    return tuple(result)


def _members(urls: Sequence[str]) -> list[_Member]:
    members = []
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None  # parse_urls checked
        members.append(_Member(parts.hostname, parts.port))
    return members


def _channel_target(members: Sequence[_Member]) -> str:
    """A gRPC target naming every member, so that the channel itself fails over."""
    if len(members) == 1:
        return members[0].address
    kinds: set[int] = set()
    for member in members:
        try:
            kinds.add(ipaddress.ip_address(member.host).version)
        except ValueError:
            kinds.add(0)
    if kinds == {4}:
        return "ipv4:" + ",".join(m.address for m in members)
    if kinds == {6}:
        return "ipv6:" + ",".join(m.address for m in members)
    raise ValueError(
        "several etcd URLs must all be IPv4 or all IPv6 literals (gRPC can only list addresses); "
        "use one DNS name that resolves to every member instead"
    )


def _channel_options(extra: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    options: dict[str, Any] = {
        # pick_first walks the address list in order and moves on when a member is down.
        "grpc.service_config": json.dumps({"loadBalancingConfig": [{"pick_first": {}}]}),
        # A SIGSTOPped or partitioned member keeps its TCP connection open; only pings notice.
        # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
        "grpc.keepalive_time_ms": 5_000,
        "grpc.keepalive_timeout_ms": 3_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 2_000,
        "grpc.min_reconnect_backoff_ms": 100,
    }
    options.update(dict(extra))
    return list(options.items())


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """An :class:`aetcd.Client` whose one gRPC channel spans several etcd members.

    Build it with :func:`connect`. Every aetcd method works as usual; ``urls`` lists the members.
    """

    def __init__(
        self,
        urls: str | Iterable[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.urls = parse_urls(urls)
        if any(u.startswith("https://") for u in self.urls):
            raise ValueError("https:// etcd URLs are not supported yet; use http://")
        members = _members(self.urls)
        self._target = _channel_target(members)
        self._grpc_options = _channel_options(options)
        super().__init__(host=members[0].host, port=members[0].port, timeout=timeout)

    async def connect(self) -> None:
        """Open the channel (once) and build aetcd's stubs on it."""
        if self._connected.is_set():
            return
        self.channel = grpc.aio.insecure_channel(self._target, options=self._grpc_options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "closed"
        return f"<EtcdClient {','.join(self.urls)} {state}>"


async def connect(
    urls: str | Iterable[str] = DEFAULT_URL,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    options: Iterable[tuple[str, Any]] = (),
) -> EtcdClient:
    """Return a connected etcd client, the counterpart of Go's ``clientv3.NewFromURL``.

    ``urls`` is one URL, a comma-separated string or a list; calls fail over between them.
    ``timeout`` bounds the wait for a first connection and every unary request later on. Raises
    :class:`EtcdUnavailableError` if no member answers within ``timeout``.
    """
    client = EtcdClient(urls, timeout=timeout, options=options)
    await client.connect()
    try:
        with anyio.fail_after(timeout):
            await client.channel.channel_ready()
    except TimeoutError:
        await client.close()
        raise EtcdUnavailableError(
            f"cannot reach etcd at {', '.join(client.urls)} within {timeout:g} s",
            code="UNAVAILABLE",
        ) from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await client.close()
        raise
    return client


def request_timeout(client: aetcd.Client) -> float:
    """The per-request timeout of ``client`` (aetcd's own default is none at all)."""
    value = getattr(client, "_timeout", None)
    return float(value) if value else DEFAULT_TIMEOUT


def translate_error(exc: grpc.aio.AioRpcError) -> EtcdError:
    """Turn a gRPC error from etcd into the matching :class:`EtcdError`."""
    code = exc.code()
    details = exc.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    if "lease not found" in details:
        return LeaseNotFoundError(
            f"etcd: {details} (the lease was never granted, has expired or was revoked)",
            code=name,
            details=details,
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"etcd unavailable: {details or name}"
        return EtcdUnavailableError(message, code=name, details=details)
    return EtcdError(f"etcd error {name}: {details}", code=name, details=details)


def etcd_errors(func: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate a coroutine function so that gRPC errors from etcd surface as :class:`EtcdError`."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc) from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key, its raw value and lease, as etcd stores it."""

    key: str
    value: bytes
    lease: int
    mod_revision: int


def prefix_range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@etcd_errors
async def list_prefix(client: aetcd.Client, prefix: str) -> tuple[int, list[KeyValue]]:
    """Read every key under ``prefix`` at one revision; return ``(revision, key-values)``."""
    await client.connect()
    start = prefix.encode()
    end = prefix_range_end(start)
    revision = 0
    result: list[KeyValue] = []
    while True:
        request = rpc.RangeRequest(key=start, range_end=end, limit=_PAGE_SIZE, revision=revision)
        response = await client.kvstub.Range(
            request, timeout=request_timeout(client), metadata=client.metadata
        )
        if not revision:
            revision = response.header.revision
        result.extend(
            KeyValue(kv.key.decode(errors="replace"), kv.value, kv.lease, kv.mod_revision)
            for kv in response.kvs
        )
        if not response.more or not response.kvs:
            return revision, result
        start = response.kvs[-1].key + b"\0"

"""Connecting to etcd, and the few typed etcd calls the rest of the package builds on.

aetcd's :class:`aetcd.Client` dials exactly one ``host:port``, in plaintext, and never renews its
auth token. :func:`connect` returns an :class:`EtcdClient`, an ``aetcd.Client`` whose channel spans
every given member, so that gRPC fails over between them, with keep-alive pings that notice a member
that stopped answering; over TLS (``https://``, optionally with a client certificate) when asked.

With a user name and password, the client authenticates at connect and a unary gRPC interceptor
on the channel puts the current token into every unary call. When etcd rejects a token (a simple
token expires after ``--auth-token-ttl`` seconds unused on a member, and every token is lost when a
member restarts), the call re-authenticates once and is retried, transparently. Streams (watch,
lease keep-alive) take the current token from ``client.metadata``, a property read anew each time a
stream opens; when etcd refuses a stream for its token, its owner calls :func:`reauthenticate` and
opens a new one. Concurrent renewals share one Authenticate request.

No secret (password, token, key) ever appears in a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aetcd
import anyio
import grpc
from aetcd import rpc
from anyio.lowlevel import checkpoint

from ._auth import (
    TOKEN_KEY,
    AuthInterceptor,
    LiveMetadata,
    TokenAuth,
    is_auth_cancel,
    is_token_error,
)
from ._exceptions import (
    AuthenticationError,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
)
from ._tls import PemSource, diagnose, tls_config

__all__ = [
    "DEFAULT_URL",
    "REQUIRE_LEADER",
    "EtcdClient",
    "KeyValue",
    "close_call",
    "connect",
    "etcd_errors",
    "list_prefix",
    "parse_urls",
    "reauthenticate",
    "request_timeout",
    "rpc_step",
    "stream_metadata",
    "translate_error",
    "watch_responses",
]

logger = logging.getLogger("aiodiscovery")


DEFAULT_URL = "http://127.0.0.1:2379"
DEFAULT_TIMEOUT = 5.0
# Range pages: one huge response could pass gRPC's 4 MiB receive limit; pages are read at one
# pinned revision, so the result is still one consistent snapshot.
_PAGE_SIZE = 5000

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
        # In grpcio's core only this bounds the wait for a ping's answer (keepalive_timeout_ms is
        # not honoured); its 60 s default would leave a frozen member unnoticed for a minute.
        "grpc.http2.ping_timeout_ms": 3_000,
        "grpc.keepalive_timeout_ms": 3_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        # Reconnect soon after a member comes back. (Not min_reconnect_backoff_ms: that is the
        # connect timeout, and a small one makes a slow TLS handshake fail forever.)
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 2_000,
    }
    options.update(dict(extra))
    return list(options.items())


# ---------------------------------------------------------------------------------------------
# The client


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """An :class:`aetcd.Client` whose one gRPC channel spans several etcd members.

    Build it with :func:`connect`. Every aetcd method works as usual; ``urls`` lists the members.
    ``https://`` URLs use TLS (see :func:`connect` for ``ca``, ``cert``, ``key`` and
    ``server_name``); with ``username`` and ``password`` every call carries an auth token that is
    renewed when etcd rejects it.
    """

    def __init__(
        self,
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
    ) -> None:
        self.urls = parse_urls(urls)
        members = _members(self.urls)
        self._target = _channel_target(members)
        self._tls = tls_config(self.urls, ca, cert, key, server_name)
        extra = list(options)
        if self._tls is not None:
            # Several IP literals make one target whose authority no certificate names: check
            # every member against one name, server_name or else the first member's host.
            override = self._tls.server_name or (members[0].host if len(members) > 1 else None)
            if override is not None:
                extra.append(("grpc.ssl_target_name_override", override))
        self._grpc_options = _channel_options(extra)
        if (username is None) != (password is None):
            raise ValueError("etcd authentication needs both username= and password=")
        if username is not None and not username:
            raise ValueError("the etcd user name must not be empty")
        self._auth = None if username is None else TokenAuth(username, password or "")
        # aetcd keeps its own (unused) copy of credentials only when given them: it is not.
        super().__init__(host=members[0].host, port=members[0].port, timeout=timeout)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Call metadata with the current auth token (``None`` without one).

        Read it anew for every call or stream: ``Watch(metadata=client.metadata)``. Unary calls
        always carry the current token whatever they pass; a stream keeps the token it was
        opened with (etcd checks it when a watch is created).
        """
        auth = self.__dict__.get("_auth")
        if auth is None or auth.token is None:
            return None
        return ((TOKEN_KEY, auth.token),)

    @metadata.setter
    def metadata(self, value: object) -> None:
        # aetcd resets it to None on close; the token itself lives in self._auth.
        if value is not None:
            raise AttributeError("EtcdClient manages its auth token itself")

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS."""
        return self._tls is not None

    @property
    def username(self) -> str | None:
        """The etcd user this client authenticates as, or ``None``."""
        return None if self._auth is None else self._auth.username

    async def connect(self) -> None:
        """Open the channel (once) and build aetcd's stubs on it."""
        if self._connected.is_set():
            return
        interceptors = [] if self._auth is None else [AuthInterceptor(self, self._auth)]
        if self._tls is not None:
            self.channel = grpc.aio.secure_channel(
                self._target,
                self._tls.credentials(),
                options=self._grpc_options,
                interceptors=interceptors or None,
            )
        else:
            self.channel = grpc.aio.insecure_channel(
                self._target, options=self._grpc_options, interceptors=interceptors or None
            )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel),
            timeout=self._timeout,
            metadata=None if self._auth is None else LiveMetadata(self),
        )
        self._connected.set()

    async def authenticate(self) -> None:
        """Get a fresh auth token now (a no-op without a user name).

        Raises :class:`AuthenticationError` if etcd rejects the user name or password and
        :class:`EtcdError` if it cannot be asked.
        """
        if self._auth is not None:
            await self._refresh_or_raise(self._auth.generation)

    async def reauthenticate(self) -> None:
        """Replace the current auth token; concurrent calls share one Authenticate request.

        Unary calls need nothing: they renew the token and retry by themselves. A stream keeps
        the token it was opened with, so when etcd cancels a watch for it
        (:func:`is_auth_cancel` on ``cancel_reason``) or fails a stream for it
        (:func:`is_token_error`), call this, then open a new stream with ``client.metadata``.
        Stream owners that want no exceptions use the module function :func:`reauthenticate`.
        A no-op without a user name. Raises :class:`AuthenticationError` if etcd no longer
        accepts the credentials and :class:`EtcdError` if it cannot be asked.
        """
        await self.authenticate()

    async def _refresh_token(self, seen: int, timeout: float | None) -> None:
        """Authenticate again unless another task already replaced token generation ``seen``."""
        assert self._auth is not None
        await self.connect()
        limit = request_timeout(self) if timeout is None else min(timeout, request_timeout(self))
        await self._auth.refresh(self.channel, limit, seen)

    async def _refresh_or_raise(self, seen: int) -> None:
        try:
            await self._refresh_token(seen, None)
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc) from None

    def statistics(self) -> dict[str, int]:
        """Counters of the authentication machinery.

        ``authentications``: successful Authenticate requests (at connect and refreshes);
        ``token_rejections``: calls and watches etcd refused for their token; ``retried_calls``:
        unary calls retried with a new token.
        """
        auth = self._auth
        if auth is None:
            return {"authentications": 0, "token_rejections": 0, "retried_calls": 0}
        return {
            "authentications": auth.authentications,
            "token_rejections": auth.token_rejections,
            "retried_calls": auth.retried_calls,
        }

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "closed"
        extra = ""
        if self._tls is not None:
            extra += " tls" + (" client-cert" if self._tls.cert is not None else "")
        if self._auth is not None:
            extra += f" user={self._auth.username!r}"
        return f"<EtcdClient {','.join(self.urls)} {state}{extra}>"


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
) -> EtcdClient:
    """Return a connected etcd client, the counterpart of Go's ``clientv3.NewFromURL``.

    ``urls`` is one URL, a comma-separated string or a list; calls fail over between them.
    ``timeout`` bounds the wait for a first connection and every unary request later on.

    ``https://`` URLs use TLS, like ``etcdctl``: ``ca`` (``--cacert``) is the CA bundle that
    signed etcd's certificate (default: the system's roots); ``cert`` and ``key`` (``--cert``,
    ``--key``) are a client certificate for etcd's ``--client-cert-auth``. Each is a file path
    or the PEM data as ``bytes``. ``server_name`` is the name to check etcd's certificate
    against when it differs from the URL's host (with several URLs: the first URL's host).

    ``username`` and ``password`` (``--user name:password``, see :func:`parse_user`): the client
    authenticates now and renews its token whenever etcd rejects it.

    Raises :class:`EtcdUnavailableError` if no member answers within ``timeout`` (naming the
    likely cause: a TLS mismatch, an untrusted certificate, ...), :class:`AuthenticationError`
    if etcd rejects the user name or password, and :class:`ValueError` or :class:`OSError` for
    bad arguments or unreadable certificate files.
    """
    client = EtcdClient(
        urls,
        timeout=timeout,
        options=options,
        ca=ca,
        cert=cert,
        key=key,
        server_name=server_name,
        username=username,
        password=password,
    )
    await client.connect()
    try:
        try:
            with anyio.fail_after(timeout):
                await client.channel.channel_ready()
        except TimeoutError:
            raise await _unreachable(client, timeout) from None
        await client.authenticate()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await client.close()
        raise
    return client


async def _unreachable(client: EtcdClient, timeout: float) -> EtcdUnavailableError:
    """The error for a channel that never got ready, with gRPC's last connection error."""
    details = ""
    try:
        # Fails at once on a channel in TRANSIENT_FAILURE, with the last connection error.
        await client.maintenancestub.Status(rpc.StatusRequest(), timeout=min(1.0, timeout))
    except grpc.aio.AioRpcError as exc:
        details = exc.details() or ""
    message = f"cannot reach etcd at {', '.join(client.urls)} within {timeout:g} s"
    hint = diagnose(details, client.tls)
    if details:
        message += f": {details}"
    if hint:
        message += f" ({hint})"
    return EtcdUnavailableError(message, code="UNAVAILABLE", details=details)


async def reauthenticate(client: aetcd.Client, error: object = None) -> bool:
    """The hook for stream owners: renew ``client``'s auth token after etcd refused a stream.

    ``error`` is what ended the stream: a watch response's ``cancel_reason``, a
    :class:`grpc.aio.AioRpcError` or an :class:`EtcdError`. The token is renewed only when that
    names an auth problem (:func:`is_auth_cancel`, :func:`is_token_error`), or always when
    ``error`` is omitted; concurrent callers share one Authenticate request. Returns whether a
    new token is now in place, so the next stream opened with ``metadata=client.metadata``
    carries it. Never raises for etcd trouble (a renewal that fails is logged with the user name
    and ``False`` returned), so a retry loop just goes on with its backoff. A plain
    ``aetcd.Client``, or one without a user name, returns ``False`` at once.
    """
    if not isinstance(client, EtcdClient) or client._auth is None:
        return False
    if isinstance(error, str):
        relevant = is_auth_cancel(error)
    elif isinstance(error, grpc.aio.AioRpcError | EtcdError):
        relevant = is_token_error(error) or is_auth_cancel(str(error))
    else:
        relevant = error is None
    if not relevant:
        return False
    auth = client._auth
    if error is not None:
        auth.token_rejections += 1
    try:
        await client._refresh_token(auth.generation, None)
    except AuthenticationError as exc:
        logger.warning("cannot renew the etcd auth token: %s", exc)
        return False
    except grpc.aio.AioRpcError as exc:
        logger.warning(
            "cannot renew the etcd auth token of user %r: %s", auth.username, translate_error(exc)
        )
        return False
    return auth.token is not None


def request_timeout(client: aetcd.Client) -> float:
    """The per-request timeout of ``client`` (aetcd's own default is none at all)."""
    value = getattr(client, "_timeout", None)
    return float(value) if value else DEFAULT_TIMEOUT


def translate_error(exc: grpc.aio.AioRpcError) -> EtcdError:
    """Turn a gRPC error from etcd into the matching :class:`EtcdError`."""
    code = exc.code()
    details = exc.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    if is_token_error(exc):
        hint = (
            "pass username= and password= to connect()"
            if "user name is empty" in details
            else "the auth token was refused"
        )
        return AuthenticationError(f"etcd: {details} ({hint})", code=name, details=details)
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


async def rpc_step(step: Awaitable[T]) -> T:
    """Await a grpc.aio call (or a stream's read or write) so that anyio scopes see its cancel."""
    try:
        return await step
    except asyncio.CancelledError:
        # grpc.aio often swallows the cancellation it is given and raises a bare CancelledError of
        # its own (a unary call, a stream still being set up), which anyio cannot tell from a
        # foreign one: it would escape move_on_after and cancel the whole task. A checkpoint lets
        # the cancelled scope deliver its own cancellation instead.
        await checkpoint()
        raise


# Asks etcd to end a stream when its member loses the leader, as Go's WithRequireLeader does, so
# that a member cut off from the quorum cannot keep a watch or keep-alive looking healthy.
REQUIRE_LEADER = ("hasleader", "true")


def stream_metadata(client: aetcd.Client) -> tuple[tuple[str, str], ...]:
    """Metadata for a long-lived stream: the current auth token and the require-leader flag."""
    return (*(client.metadata or ()), REQUIRE_LEADER)


async def close_call(call: Any) -> None:
    """Cancel a grpc.aio call and let grpc's own bookkeeping task for it finish."""
    call.cancel()
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        await call.code()


async def watch_responses(
    client: aetcd.Client, create: rpc.WatchCreateRequest
) -> AsyncGenerator[rpc.WatchResponse, None]:
    """Open one watch stream and yield its responses until it breaks.

    Every way a stream can end (a gRPC error, etcd closing it, a write to a stream grpc already
    ended, no answer to the create request within the request timeout) surfaces as an
    :class:`EtcdError`; cancellation and progress handling are the caller's. The call is always
    closed before this returns, so iterate it with ``contextlib.aclosing``.
    """
    await client.connect()
    call = rpc.WatchStub(client.channel).Watch(metadata=stream_metadata(client))
    try:
        timeout = request_timeout(client)
        try:
            with anyio.fail_after(timeout):
                await rpc_step(call.write(rpc.WatchRequest(create_request=create)))
        except TimeoutError:
            raise EtcdUnavailableError(
                f"etcd did not take the watch request within {timeout:g} s", code="UNAVAILABLE"
            ) from None
        while True:
            response = await rpc_step(call.read())
            if response is grpc.aio.EOF:
                raise EtcdUnavailableError("etcd closed the watch stream", code="UNAVAILABLE")
            yield response
    except grpc.aio.AioRpcError as exc:
        raise translate_error(exc) from exc
    except asyncio.InvalidStateError:
        # A write to a stream that grpc already ended: its status says why.
        code = await call.code()
        raise EtcdUnavailableError(f"the watch stream ended ({code})", code="UNAVAILABLE") from None
    finally:
        await close_call(call)


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
        response = await rpc_step(
            client.kvstub.Range(request, timeout=request_timeout(client), metadata=client.metadata)
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

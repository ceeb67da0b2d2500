"""EtcdClient and connect(): the package's one door to etcd.

The client owns everything that touches the network: one gRPC channel per etcd member (see
:mod:`.members` for how it moves between them), TLS, the auth token and its renewal, and the
background tasks that several users share (the watch of each prefix). The rest of the package
talks to etcd only through it, with etcd's generated gRPC stubs; aetcd's own API stays available
for users through :attr:`EtcdClient.aetcd` (see :mod:`.aetcd_view`), but nothing here depends on
how aetcd works inside.

With a user name and password, the client authenticates at connect and a unary gRPC interceptor
on every member channel puts the current token into every unary call. When etcd rejects a token (a
simple token expires after ``--auth-token-ttl`` seconds unused on a member, and every token is lost
when a member restarts), the call re-authenticates once and is retried. Streams take the current
token from :attr:`EtcdClient.metadata` when they open; when etcd refuses a stream for its token,
its owner calls :meth:`EtcdClient.reauthenticate` and opens a new one.

No secret (password, token, key) ever appears in a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import grpc

from .._codec.endpoint import DEFAULT_METADATA_BUDGET
from .._exceptions import AuthenticationError, EtcdError
from .._grpccall import rpc_step
from .._metrics import track
from .._taskgroup import TaskHost
from .auth import TOKEN_KEY, AuthInterceptor, TokenAuth, is_auth_cancel, is_token_error
from .members import DEFAULT_HEARTBEAT, Member, MemberSet, MemberStatistics
from .rpc import member_trouble, translate_error
from .tls import PemSource, tls_config
from .urls import DEFAULT_URL, member_address, parse_urls
from .watch.hub import WatchHub

if TYPE_CHECKING:
    import aetcd

__all__ = ["DEFAULT_TIMEOUT", "ClientStatistics", "EtcdClient"]

logger = logging.getLogger("aiodiscovery.etcd")

#: Seconds: the wait for a first member to answer, and each unary request's deadline.
DEFAULT_TIMEOUT = 5.0
# Asks etcd to end a stream when its member loses the leader, as Go's WithRequireLeader does, so
# that a member cut off from the quorum cannot keep a watch or keep-alive looking healthy.
REQUIRE_LEADER = ("hasleader", "true")


def _channel_options(extra: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    options: dict[str, Any] = {
        # etcd's ping policy (grpc-go's server with PermitWithoutStream false and MinTime =
        # --grpc-keepalive-min-time, 5 s by default) strikes a ping on a connection without a
        # stream if any ping came in the 2 hours before, and any ping under MinTime after the
        # previous one; the third strike draws GOAWAY "too_many_pings". So no ping without a call
        # (the standby members' channels stay quiet), and at twice the default MinTime on busy
        # ones, leaving room for timer and scheduling slack on either side. Pings are a backstop
        # only: a silent member is noticed by whoever expects an answer from it (see .members).
        "grpc.keepalive_time_ms": 10_000,
        # In grpcio's core only this bounds the wait for a ping's answer (keepalive_timeout_ms is
        # not honoured); its 60 s default would leave a dead connection unnoticed for a minute.
        "grpc.http2.ping_timeout_ms": 3_000,
        "grpc.keepalive_timeout_ms": 3_000,
        "grpc.keepalive_permit_without_calls": 0,
        # A watch or keep-alive stream sends nothing for long stretches: keep-alive pings must
        # not wait for data from us.
        "grpc.http2.max_pings_without_data": 0,
        # Reconnect soon after a member comes back. (Not min_reconnect_backoff_ms: that is the
        # connect timeout, and a small one makes a slow TLS handshake fail forever.)
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 2_000,
    }
    options.update(dict(extra))
    return list(options.items())


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of an :class:`EtcdClient`'s counters, from :meth:`EtcdClient.statistics`.

    ``authentications``: successful Authenticate requests (at connect and refreshes);
    ``token_rejections``: calls and streams etcd refused for their token; ``retried_calls``: unary
    calls retried with a new token; ``members``: the member in use and the failovers between them;
    ``watches``: prefixes watched on behalf of the client's users (one etcd watch each).
    """

    authentications: int
    token_rejections: int
    retried_calls: int
    members: MemberStatistics
    watches: int


class EtcdClient:
    """A connection to an etcd cluster, built by :func:`connect`.

    ``urls`` lists the members; requests go to one at a time and move to another when it dies or
    stops answering. ``https://`` URLs use TLS (see :func:`connect` for ``ca``, ``cert``, ``key``
    and ``server_name``); with ``username`` and ``password`` every call carries an auth token that
    is renewed when etcd rejects it. ``timeout`` bounds each unary request;
    ``metadata_budget`` bounds what each endpoint read from etcd may hold (see :func:`connect`).

    aetcd's methods (``put``, ``get``, ``lease``, ``watch_prefix``, ...) work on the client as on an
    ``aetcd.Client``; they run on :attr:`aetcd`, an ``aetcd.Client`` bound to the member in use.
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
        heartbeat: float = DEFAULT_HEARTBEAT,
        metadata_budget: int | None = DEFAULT_METADATA_BUDGET,
    ) -> None:
        self.urls = parse_urls(urls)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = float(timeout)
        self._tls = tls_config(self.urls, ca, cert, key, server_name)
        extra = list(options)
        if self._tls is not None and self._tls.server_name is not None:
            extra.append(("grpc.ssl_target_name_override", self._tls.server_name))
        self._grpc_options = _channel_options(extra)
        if (username is None) != (password is None):
            raise ValueError("etcd authentication needs both username= and password=")
        if username is not None and not username:
            raise ValueError("the etcd user name must not be empty")
        self._auth = None if username is None else TokenAuth(username, password or "")
        self.heartbeat = heartbeat
        if metadata_budget is not None and (
            isinstance(metadata_budget, bool) or not isinstance(metadata_budget, int)
        ):
            raise TypeError(f"metadata_budget must be an int or None, got {metadata_budget!r}")
        if metadata_budget is not None and metadata_budget < 0:
            raise ValueError(f"metadata_budget must not be negative, got {metadata_budget}")
        #: What one endpoint read from etcd may hold in memory (see :func:`connect`).
        self.metadata_budget = metadata_budget
        self._members: MemberSet | None = None
        self._host = TaskHost(f"aiodiscovery etcd client {','.join(self.urls)}")
        self._closed = False
        self._warned_plaintext = False
        self._view: Any = None
        #: The etcd watches shared by every user of this client, one per prefix.
        self.watches = WatchHub(self, self._host)

    # -- identity and state -------------------------------------------------------------------

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Call metadata with the current auth token (``None`` without one).

        Read it anew for every call or stream: ``Watch(metadata=client.metadata)``. Unary calls
        always carry the current token whatever they pass; a stream keeps the token it was opened
        with (etcd checks it when a watch is created).
        """
        auth = self._auth
        if auth is None or auth.token is None:
            return None
        return ((TOKEN_KEY, auth.token),)

    def stream_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for a long-lived stream: the current token and the require-leader flag."""
        return (*(self.metadata or ()), REQUIRE_LEADER)

    @property
    def tls(self) -> bool:
        """Whether the channels use TLS."""
        return self._tls is not None

    @property
    def username(self) -> str | None:
        """The etcd user this client authenticates as, or ``None``."""
        return None if self._auth is None else self._auth.username

    @property
    def connected(self) -> bool:
        """Whether the channels are open (between :meth:`connect` and :meth:`close`)."""
        return self._members is not None and not self._closed

    @property
    def members(self) -> MemberSet:
        """The members and the one in use (opens nothing: call :meth:`connect` first)."""
        if self._members is None:
            raise RuntimeError("the client is not connected: call connect() first")
        return self._members

    @property
    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel of the member in use, for streams and stubs of your own."""
        return self.members.active.channel

    # -- life cycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open one channel per member (once) and the client's background task group.

        :func:`connect` also waits for a member to answer and authenticates; this does not.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._members is not None:
            return
        self._warn_plaintext(stacklevel=3)
        members = [Member(url, self._dial(url)) for url in self.urls]
        self._members = MemberSet(members, heartbeat=self.heartbeat)
        await self._host.open()
        track(self, "client")

    def _warn_plaintext(self, stacklevel: int) -> None:
        if self._auth is None or self._tls is not None or self._warned_plaintext:
            return
        self._warned_plaintext = True
        warnings.warn(
            f"the etcd password of user {self._auth.username!r} is sent in plaintext to "
            f"{', '.join(self.urls)}: use https:// URLs",
            UserWarning,
            stacklevel=stacklevel + 1,
        )

    def _dial(self, url: str) -> grpc.aio.Channel:
        interceptors = (
            None if self._auth is None else [AuthInterceptor(self._auth, self._refresh_token)]
        )
        address = member_address(url)
        if self._tls is not None:
            return grpc.aio.secure_channel(
                address,
                self._tls.credentials(),
                options=self._grpc_options,
                interceptors=interceptors,
            )
        return grpc.aio.insecure_channel(
            address, options=self._grpc_options, interceptors=interceptors
        )

    async def close(self) -> None:
        """Stop the background tasks and close every channel. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._host.close()
        if self._view is not None:
            await self._view.close()
        if self._members is not None:
            with anyio.CancelScope(shield=True):
                for member in self._members.members:
                    await member.channel.close()

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self.__dict__.get("_members") is not None and not self.__dict__.get("_closed", True):
            _warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)

    # -- requests -------------------------------------------------------------------------------

    async def unary(
        self, method: Callable[[Member], Any], request: Any, *, timeout: float | None = None
    ) -> Any:
        """Send one unary request to the member in use: ``await client.unary(lambda m:
        m.kv.Range, rpc.RangeRequest(...))``.

        ``timeout`` defaults to the client's. A member that does not answer in time, or cannot be
        reached, is left for another one (the request itself is not retried: it may have been
        applied). gRPC errors surface as :class:`EtcdError`.
        """
        await self.connect()
        member = self.members.active
        try:
            reply = await rpc_step(
                method(member)(
                    request,
                    timeout=self.timeout if timeout is None else timeout,
                    metadata=self.metadata,
                )
            )
        except grpc.aio.AioRpcError as exc:
            if member_trouble(exc):
                self.members.abandon(member, f"{exc.code().name}: {exc.details()}")
            raise translate_error(exc) from exc
        self.members.heard(member)
        return reply

    # -- authentication -------------------------------------------------------------------------

    async def authenticate(self) -> None:
        """Get a fresh auth token now (a no-op without a user name).

        Raises :class:`AuthenticationError` if etcd rejects the user name or password and
        :class:`EtcdError` if it cannot be asked.
        """
        if self._auth is None:
            return
        try:
            await self._refresh_token(self._auth.generation, None)
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc) from None

    async def reauthenticate(self, error: object = None) -> bool:
        """Renew the auth token after etcd refused a stream for it; never raises for etcd trouble.

        ``error`` is what ended the stream: a watch response's ``cancel_reason``, a
        :class:`grpc.aio.AioRpcError` or an :class:`EtcdError`. The token is renewed only when that
        names an auth problem, or always when ``error`` is omitted; concurrent callers share one
        Authenticate request. Returns whether a new token is now in place, so that the next stream
        opened with ``metadata=client.metadata`` carries it. A renewal that fails is logged (with
        the user name only) and gives ``False``, so a retry loop just goes on with its backoff.
        Unary calls need none of this: they renew the token and retry by themselves.
        """
        auth = self._auth
        if auth is None:
            return False
        if isinstance(error, str):
            relevant = is_auth_cancel(error)
        elif isinstance(error, grpc.aio.AioRpcError | EtcdError):
            relevant = is_token_error(error) or is_auth_cancel(str(error))
        else:
            relevant = error is None
        if not relevant:
            return False
        if error is not None:
            auth.token_rejections += 1
        try:
            await self._refresh_token(auth.generation, None)
        except AuthenticationError as exc:
            logger.warning("cannot renew the etcd auth token: %s", exc)
            return False
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "cannot renew the etcd auth token of user %r: %s",
                auth.username,
                translate_error(exc),
            )
            return False
        return auth.token is not None

    async def _refresh_token(self, seen: int, timeout: float | None) -> None:
        """Authenticate again unless another task already replaced token generation ``seen``."""
        assert self._auth is not None
        await self.connect()
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        await self._auth.refresh(self.members.active.channel, limit, seen)

    # -- aetcd's API ----------------------------------------------------------------------------

    @property
    def aetcd(self) -> aetcd.Client:
        """An ``aetcd.Client`` on this client's members, TLS and token: aetcd's whole API."""
        if self._view is None:
            from .aetcd_view import AetcdView  # noqa: PLC0415 - only for users of aetcd's API

            self._view = AetcdView(self)
        view: aetcd.Client = self._view
        return view

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: aetcd's public methods, for code written
        # against the aetcd.Client that connect() used to return.
        from .aetcd_view import AETCD_METHODS  # noqa: PLC0415

        if name in AETCD_METHODS:
            return getattr(self.aetcd, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> ClientStatistics:
        """Counters of the authentication machinery, the members and the shared watches."""
        auth = self._auth
        members = (
            self._members.statistics()
            if self._members is not None
            else MemberStatistics(self.urls[0], 0, 0, 0, None)
        )
        return ClientStatistics(
            authentications=0 if auth is None else auth.authentications,
            token_rejections=0 if auth is None else auth.token_rejections,
            retried_calls=0 if auth is None else auth.retried_calls,
            members=members,
            watches=len(self.watches),
        )

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        extra = ""
        if self._tls is not None:
            extra += " tls" + (" client-cert" if self._tls.cert is not None else "")
        if self._auth is not None:
            extra += f" user={self._auth.username!r}"
        return f"<EtcdClient {','.join(self.urls)} {state}{extra}>"

"""Username/password authentication to etcd: the token, its renewal and the unary interceptor.

aetcd never renews its token (aetcd issues #34 and #37). Here a unary interceptor puts the current
token into every unary call and, when etcd rejects it, renews it once for all the calls rejected
with the same token and retries. Streams take the token when they open (see
:class:`LiveMetadata`); their owners renew it through :func:`aiodiscovery.reauthenticate`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, overload

import grpc
from aetcd import rpc

from .._exceptions import AuthenticationError, EtcdError

__all__ = [
    "TOKEN_KEY",
    "AuthInterceptor",
    "LiveMetadata",
    "TokenAuth",
    "is_auth_cancel",
    "is_token_error",
    "parse_user",
]

logger = logging.getLogger("aiodiscovery.etcd")

TOKEN_KEY = "token"
_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
_WATCH = "/etcdserverpb.Watch/Watch"
# etcd's messages for a token it will not take (rpctypes.ErrGRPCInvalidAuthToken,
# ErrGRPCAuthOldRevision, ErrGRPCUserEmpty); the Go client re-authenticates on the same set.
_TOKEN_ERRORS = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
)


def parse_user(value: str) -> tuple[str, str | None]:
    """Split etcdctl's ``--user`` value ``name:password`` (or just ``name``) at the first colon."""
    name, sep, password = value.partition(":")
    if not name:
        raise ValueError("the etcd user name must not be empty (expected name:password)")
    return name, (password if sep else None)


def is_token_error(error: grpc.aio.AioRpcError | EtcdError | str) -> bool:
    """Whether etcd refused a call, or cancelled a watch, for the auth token.

    Accepts a gRPC error, an :class:`EtcdError` or a watch response's ``cancel_reason``. True for
    an expired or unknown token, a token from before an auth change, and a missing token; then
    :meth:`EtcdClient.reauthenticate` and a retry (on a new stream) can help. A wrong password or
    a permission error is not a token error.
    """
    if isinstance(error, grpc.aio.AioRpcError):
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return True
        text = error.details() or ""
    elif isinstance(error, EtcdError):
        if error.code == "UNAUTHENTICATED":
            return True
        text = error.details or str(error)
    else:
        text = error
    return any(marker in text for marker in _TOKEN_ERRORS)


def is_auth_cancel(cancel_reason: str) -> bool:
    """Whether etcd may have cancelled a watch for its auth token (``WatchResponse.cancel_reason``).

    etcd 3.5.1 cancels a watch created with an expired or missing token with ``"rpc error: code =
    PermissionDenied desc = etcdserver: permission denied"``, the same words as for a user who
    may not read the range; later versions name the token. Renewing the token and watching again
    settles it either way (a real denial is denied again).
    """
    return is_token_error(cancel_reason) or "permission denied" in cancel_reason


def _is_token_rejection(code: grpc.StatusCode, details: str) -> bool:
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return True
    return code == grpc.StatusCode.INVALID_ARGUMENT and any(m in details for m in _TOKEN_ERRORS)


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class TokenAuth:
    """The user name, password and current token of one client; renews the token on demand.

    ``generation`` counts tokens: a caller remembers the generation its call used, and a refresh
    for an older generation than the current one is skipped, so that any number of calls
    rejected for the same token share one Authenticate request.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.__password = password
        self.token: str | None = None
        self.generation = 0
        self.enabled_on_server = True
        self.authentications = 0
        self.token_rejections = 0
        self.retried_calls = 0
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"<etcd credentials user={self.username!r}>"

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def settled(self) -> tuple[str | None, int]:
        """The current token and its generation, after any refresh in progress."""
        lock = self._get_lock()
        if lock.locked():
            async with lock:
                pass
        return self.token, self.generation

    async def refresh(self, channel: grpc.aio.Channel, timeout: float, seen: int) -> None:
        """Authenticate again, unless the token changed since generation ``seen``.

        Raises :class:`AuthenticationError` when etcd rejects the user name or password, and
        :class:`grpc.aio.AioRpcError` when etcd cannot be asked.
        """
        async with self._get_lock():
            if self.generation != seen:
                return
            await self._authenticate(channel, timeout)

    async def _authenticate(self, channel: grpc.aio.Channel, timeout: float) -> None:
        request = rpc.AuthenticateRequest(name=self.username, password=self.__password)
        try:
            reply = await rpc.AuthStub(channel).Authenticate(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if "authentication is not enabled" in details:
                # Like Go's client: no auth on the server, so no token; should auth be turned on
                # later, the first call rejected for a missing token authenticates again.
                if self.enabled_on_server:
                    logger.info(
                        "etcd authentication is not enabled; connected without a token "
                        "(user %r unused)",
                        self.username,
                    )
                self.enabled_on_server = False
                self.token = None
                self.generation += 1
                return
            if exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                raise AuthenticationError(
                    f"etcd rejected the credentials of user {self.username!r}: {details}",
                    code=exc.code().name,
                    details=details,
                    username=self.username,
                ) from None
            raise
        self.enabled_on_server = True
        self.token = reply.token
        self.generation += 1
        self.authentications += 1
        logger.debug("authenticated to etcd as user %r", self.username)


def _with_token(
    details: grpc.aio.ClientCallDetails, token: str | None
) -> grpc.aio.ClientCallDetails:
    if token is None:
        return details
    # A copy: the caller's Metadata object must not change under it.
    metadata = grpc.aio.Metadata(*((k, v) for k, v in (details.metadata or ()) if k != TOKEN_KEY))
    metadata.add(TOKEN_KEY, token)
    return details._replace(metadata=metadata)


class AuthInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Puts the current token into every unary call; when etcd rejects it, renews it (once for
    all calls rejected with the same token) and retries the call once.

    Streams are deliberately not intercepted: grpc.aio wraps an intercepted stream in a call
    object whose ``write()`` raises ``InvalidStateError`` instead of the RPC's error and whose
    broken connection reads as ``INTERNAL``, which would change what every stream owner sees.
    Streams get the current token from :attr:`EtcdClient.metadata` when they are opened.
    """

    def __init__(
        self, auth: TokenAuth, refresh: Callable[[int, float | None], Awaitable[None]]
    ) -> None:
        self._auth = auth
        # refresh(seen_generation, timeout): renew the token unless someone already did.
        self._refresh = refresh

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        if _method_name(details.method) == _AUTHENTICATE:
            return await continuation(details, request)
        auth = self._auth
        started = time.monotonic()
        token, seen = await auth.settled()
        call = await continuation(_with_token(details, token), request)
        try:
            code = await call.code()
            if code == grpc.StatusCode.OK:
                return call
            text = await call.details() or ""
        except asyncio.CancelledError:
            call.cancel()
            raise
        # With a client certificate, etcd takes a call without a token as from the user named
        # by the certificate: "permission denied" then means "no token" too.
        no_token = token is None and code == grpc.StatusCode.PERMISSION_DENIED
        if not (no_token or _is_token_rejection(code, text)):
            return call
        auth.token_rejections += 1
        remaining = None
        if details.timeout is not None:
            remaining = details.timeout - (time.monotonic() - started)
            if remaining <= 0:
                return call
        try:
            await self._refresh(seen, remaining)
        except grpc.aio.AioRpcError:
            return call  # etcd could not be asked: report the call's own error
        auth.retried_calls += 1
        if details.timeout is not None:
            remaining = max(0.0, details.timeout - (time.monotonic() - started))
        retry = details._replace(timeout=remaining)
        return await continuation(_with_token(retry, auth.token), request)


class LiveMetadata(Sequence[tuple[str, str]]):
    """Call metadata that reads the current token whenever gRPC reads it.

    For aetcd's own watcher, which keeps the metadata it was built with for every stream it
    opens later. ``current`` returns the metadata of the moment (``None`` without a token).
    """

    def __init__(self, current: Callable[[], tuple[tuple[str, str], ...] | None]) -> None:
        self._current = current

    def _items(self) -> tuple[tuple[str, str], ...]:
        return self._current() or ()

    def __len__(self) -> int:
        return len(self._items())

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return self._items()[index]

    def __repr__(self) -> str:
        return "<current etcd auth token>" if self._items() else "()"

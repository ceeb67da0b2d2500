"""A loopback TCP proxy that tests use to cut and heal connections to etcd or a gRPC server."""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from .._taskgroup import exit_task_group

__all__ = ["TcpProxy"]

_CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until :meth:`cut`.

    ``async with TcpProxy(etcd.client_port) as proxy:`` then dial ``proxy.url``. :meth:`cut` resets
    every open connection and refuses new ones (a network partition as the client sees it);
    :meth:`heal` accepts connections again. ``connections`` counts the connections accepted,
    :attr:`open_connections` those still open.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._open = True
        self._cuts = 0
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._links: set[anyio.CancelScope] = set()
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what a client should dial instead of the target."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self._listener = listener
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None and self._listener is not None
        try:
            return await exit_task_group(self._task_group, exc_type, exc, tb)
        finally:
            await self._listener.aclose()

    @property
    def open_connections(self) -> int:
        """Connections being forwarded now."""
        return len(self._links)

    def cut(self) -> None:
        """Reset every proxied connection now and refuse new ones until :meth:`heal`."""
        self._open = False
        self._cuts += 1
        for scope in list(self._links):
            scope.cancel()

    def heal(self) -> None:
        """Accept and forward connections again."""
        self._open = True

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if not self._open:
                _reset(client)
                return
            cuts = self._cuts
            try:
                upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            except OSError:
                _reset(client)
                return
            if self._cuts != cuts:
                # cut() ran while we were connecting.
                _reset(client)
                _reset(upstream)
                await upstream.aclose()
                return
            self.connections += 1
            async with upstream:
                pipes = anyio.create_task_group()
                self._links.add(pipes.cancel_scope)
                try:
                    async with pipes:
                        pipes.start_soon(_pump, client, upstream)
                        pipes.start_soon(_pump, upstream, client)
                finally:
                    self._links.discard(pipes.cancel_scope)
                if pipes.cancel_scope.cancel_called:
                    _reset(client)
                    _reset(upstream)


async def _pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
    ):
        while True:
            await sink.send(await source.receive(_CHUNK))
    # One side finished: end the other so that the pair closes together.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sink.send_eof()


def _reset(stream: anyio.abc.SocketStream) -> None:
    # SO_LINGER 0 makes close() send RST: the peer sees a broken connection, not a clean EOF.
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

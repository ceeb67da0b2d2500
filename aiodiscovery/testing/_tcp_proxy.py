"""A loopback TCP proxy that tests use to cut and heal connections to etcd or a gRPC server."""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable
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

    ``port`` is the port to listen on (by default a free one, known after entry).
    ``latency`` (seconds, changeable at any time) delays every chunk of data, both ways, by that
    much from the moment the proxy received it: added network latency, without a bandwidth
    limit. :meth:`cut_from` cuts only the connections whose client address a predicate picks.
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        latency: float = 0.0,
        port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.latency = latency
        self.port = port
        self._refuse: Callable[[tuple[str, int]], bool] | None = None
        self.connections = 0
        self._open = True
        self._cuts = 0
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._links: dict[anyio.CancelScope, tuple[str, int]] = {}
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what a client should dial instead of the target."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
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

    def cut_from(self, refuse: Callable[[tuple[str, int]], bool]) -> None:
        """Reset the connections whose client address (host, port) ``refuse`` picks, and refuse
        new ones it picks, until :meth:`heal`; other clients are served as before."""
        self._refuse = refuse
        for scope, peer in list(self._links.items()):
            if refuse(peer):
                scope.cancel()

    def heal(self) -> None:
        """Accept and forward connections again (from every client)."""
        self._open = True
        self._refuse = None

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            peer = client.extra(anyio.abc.SocketAttribute.remote_address)
            assert isinstance(peer, tuple)
            if not self._open or (self._refuse is not None and self._refuse(peer[:2])):
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
                self._links[pipes.cancel_scope] = peer[:2]
                try:
                    async with pipes:
                        pipes.start_soon(self._pump, client, upstream)
                        pipes.start_soon(self._pump, upstream, client)
                finally:
                    self._links.pop(pipes.cancel_scope, None)
                if pipes.cancel_scope.cancel_called:
                    _reset(client)
                    _reset(upstream)

    async def _pump(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        # Chunks wait in a queue until due, so that latency delays data without throttling it.
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_deliver, receive, sink)
                async with send:
                    with contextlib.suppress(anyio.EndOfStream):
                        while True:
                            chunk = await source.receive(_CHUNK)
                            await send.send((anyio.current_time() + self.latency, chunk))
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # One side finished: end the other so that the pair closes together.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await sink.send_eof()


async def _deliver(
    queue: anyio.abc.ObjectReceiveStream[tuple[float, bytes]], sink: anyio.abc.SocketStream
) -> None:
    async with queue:
        async for due, chunk in queue:
            delay = due - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            await sink.send(chunk)


def _reset(stream: anyio.abc.SocketStream) -> None:
    # SO_LINGER 0 makes close() send RST: the peer sees a broken connection, not a clean EOF.
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

"""aetcd's API on an EtcdClient's members, for users who want ``put``, ``get``, ``lease``, ...

The package itself never goes through aetcd's client: it uses etcd's generated stubs on the
members :class:`~aiodiscovery.EtcdClient` owns. This view is an ``aetcd.Client`` whose public
stub attributes always point at the member in use, so every aetcd method runs over the client's
TLS, token and failover. Only aetcd's public surface is touched: the methods that aetcd builds on
its private watcher (``watch``, ``watch_once``) are provided here on aetcd's public
:class:`aetcd.watcher.Watcher` class.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Protocol

import aetcd
import grpc
from aetcd import rpc

from .auth import LiveMetadata
from .members import MemberSet

__all__ = ["AETCD_METHODS", "AetcdView"]

#: aetcd.Client's public methods, which EtcdClient forwards to its view.
AETCD_METHODS = frozenset(
    name
    for name, value in inspect.getmembers(aetcd.Client)
    if not name.startswith("_") and callable(value) and name not in {"connect", "close"}
)


class _Owner(Protocol):
    """What the view needs of its :class:`~aiodiscovery.EtcdClient`."""

    timeout: float

    @property
    def members(self) -> MemberSet: ...
    @property
    def channel(self) -> grpc.aio.Channel: ...
    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None: ...
    async def connect(self) -> None: ...


class AetcdView(aetcd.Client):  # type: ignore[misc]
    """An ``aetcd.Client`` bound to an :class:`EtcdClient`; closing it closes nothing of the
    client's (the client closes it)."""

    def __init__(self, owner: _Owner) -> None:
        super().__init__(timeout=owner.timeout)
        self.__owner = owner
        self.__watcher: aetcd.watcher.Watcher | None = None

    # aetcd assigns these in its constructor and its connect/close; they follow the client.
    def _stub(name: str) -> Any:
        def get(self: AetcdView) -> Any:
            return getattr(self.__owner.members.active, name)

        def assign(self: AetcdView, _value: object) -> None:
            """aetcd resets the stubs to None when it builds or closes a client: ignored."""

        return property(get, assign)

    kvstub = _stub("kv")
    leasestub = _stub("lease")
    clusterstub = _stub("cluster")
    maintenancestub = _stub("maintenance")
    auth_stub = _stub("auth")
    channel = _stub("channel")
    del _stub

    @property
    def metadata(self) -> Any:
        """The client's current token (the client's interceptor adds it to unary calls)."""
        return self.__owner.metadata

    @metadata.setter
    def metadata(self, _value: object) -> None:
        """Ignored: the token is the client's."""

    async def connect(self) -> None:
        """Make sure the client's members are open."""
        await self.__owner.connect()

    async def close(self) -> None:
        """Stop this view's watches; the client's channels stay open."""
        watcher, self.__watcher = self.__watcher, None
        if watcher is not None:
            await watcher.shutdown()

    async def _watches(self) -> aetcd.watcher.Watcher:
        await self.connect()
        if self.__watcher is None:
            owner = self.__owner
            self.__watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(owner.channel),
                timeout=owner.timeout,
                metadata=LiveMetadata(lambda: owner.metadata),
            )
        return self.__watcher

    async def watch(self, key: bytes, **options: Any) -> aetcd.rtypes.Watch:
        """aetcd's ``watch``: an :class:`aetcd.rtypes.Watch` of ``key`` (see aetcd's docs).

        Like aetcd's own, it does not resume after a broken stream; prefer
        :meth:`aiodiscovery.EndpointManager.watch` for service endpoints.
        """
        watcher = await self._watches()
        responses: asyncio.Queue[Any] = asyncio.Queue()
        registration = await watcher.add_callback(key, responses.put, **options)
        stopped = asyncio.Event()

        async def cancel() -> None:
            stopped.set()
            await responses.put(None)
            await watcher.cancel(registration.watch_id)

        async def iterate() -> Any:
            while not stopped.is_set():
                response = await responses.get()
                if response is None:
                    return
                if isinstance(response, Exception):
                    stopped.set()
                    raise response
                yield response

        return aetcd.rtypes.Watch(iterate, cancel, registration.watch_id)

    async def watch_once(
        self, key: bytes, timeout: float | None = None, **options: Any
    ) -> aetcd.rtypes.Event:
        """aetcd's ``watch_once``: the first event on ``key``, or
        :class:`aetcd.exceptions.WatchTimeoutError` after ``timeout`` seconds."""
        watcher = await self._watches()
        events: asyncio.Queue[Any] = asyncio.Queue()
        registration = await watcher.add_callback(key, events.put, **options)
        try:
            return await asyncio.wait_for(events.get(), timeout)
        except TimeoutError:
            raise aetcd.exceptions.WatchTimeoutError from None
        finally:
            await watcher.cancel(registration.watch_id)

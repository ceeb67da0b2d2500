"""Watcher: the live endpoint set of one service, for as long as an ``async with`` block runs.

Every Watcher, pool and ``EndpointManager.watch()`` of one client shares one etcd watch per
prefix (see :mod:`aiodiscovery._etcd.watch.hub`); a Watcher is a reader of that shared state,
so it holds no task and no cancel scope of its own, and Watchers may be entered and left in any
order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import anyio

from .._codec.endpoint import parse_target
from .._codec.endpointset import EndpointSet
from .._etcd.client import EtcdClient
from .._etcd.watch.hub import SharedWatch
from .._etcd.watch.prefix import WatcherStatistics
from .._taskgroup import EnterOnce

__all__ = ["Watcher"]


class Watcher:
    """Keeps an :class:`EndpointSet` equal to what etcd holds under one service prefix.

    ``async with Watcher(client, "foo/bar/my-service") as watcher:`` returns once the prefix has
    been listed (or raises :class:`EtcdUnavailableError` after ``start_timeout`` seconds, by
    default twice the client's request timeout); from then on the set follows every change through
    stream breaks, member failures and compactions. Read :attr:`snapshot`, await
    :meth:`wait_for_change`, or iterate :meth:`snapshots`; a slow reader only ever skips to the
    latest state and never holds anyone up. After the block, waiting raises :class:`RuntimeError`.

    ``backoff_cap`` caps the retry delay of the prefix's etcd watch when this Watcher is the one
    that starts it.
    """

    def __init__(
        self,
        client: EtcdClient,
        target: str,
        *,
        start_timeout: float | None = None,
        backoff_cap: float = 3.0,
    ) -> None:
        self.client = client
        self.target = target
        self.prefix = parse_target(target)
        self.start_timeout = start_timeout
        self.backoff_cap = backoff_cap
        self._shared: SharedWatch | None = None
        self._once = EnterOnce("Watcher")
        self._closed = False
        self._changed: anyio.Event | None = None

    @property
    def closed(self) -> bool:
        """Whether the Watcher's block has ended."""
        return self._closed

    @property
    def snapshot(self) -> EndpointSet:
        """The current endpoint set (the last one seen, after the block)."""
        if self._shared is None:
            return EndpointSet()
        return self._shared.snapshot

    async def __aenter__(self) -> Self:
        self._once.enter()
        timeout = self.start_timeout or 2 * self.client.timeout
        self._changed = anyio.Event()
        shared = await self.client.watches.join(
            self.prefix, timeout=timeout, backoff_cap=self.backoff_cap
        )
        shared.add_listener(self._wake)
        self._shared = shared
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shared = self._shared
        self._closed = True
        if shared is not None:
            shared.remove_listener(self._wake)
            self.client.watches.leave(shared)
        self._wake()

    def _wake(self) -> None:
        # Waiters hold the old event; a fresh one makes the next change a new wake-up.
        changed, self._changed = self._changed, anyio.Event()
        if changed is not None:
            changed.set()

    async def wait_for_change(self, revision: int | None = None) -> EndpointSet:
        """Wait until the set reflects a revision newer than ``revision`` (by default the
        current one) and return the snapshot.

        Raises :class:`RuntimeError` once the Watcher's block has ended, and the watch's error
        if etcd stops letting this client read the prefix.
        """
        shared = self._shared
        if shared is None:
            raise RuntimeError("the Watcher is not entered: use 'async with Watcher(...)'")
        seen = shared.revision if revision is None else revision
        while shared.revision <= seen:
            if self._closed:
                raise RuntimeError(f"{self!r} has exited")
            if shared.error is not None:
                raise shared.error
            assert self._changed is not None
            await self._changed.wait()
        return shared.snapshot

    async def snapshots(self) -> AsyncIterator[EndpointSet]:
        """Yield the current set, then each newer set; a slow consumer gets only the latest.

        Ends when the Watcher's block ends.
        """
        current = self.snapshot
        yield current
        while True:
            try:
                current = await self.wait_for_change(current.revision)
            except RuntimeError:
                if self.closed:
                    return
                raise
            yield current

    def statistics(self) -> WatcherStatistics:
        """Counters of the prefix's watch: endpoints, revision, reconnects, relists, bad values."""
        if self._shared is None:
            return WatcherStatistics()
        return self._shared.statistics()

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._closed else "open" if self._shared is not None else "new"
        return (
            f"<Watcher {self.prefix!r} {state} endpoints={s.endpoints} revision={s.revision} "
            f"reconnects={s.reconnects} relists={s.relists} bad_values={s.bad_values}>"
        )

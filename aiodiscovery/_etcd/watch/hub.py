"""One etcd watch per prefix per client, shared by every Watcher, pool and watch() iterator.

:class:`WatchHub` belongs to an :class:`~aiodiscovery.EtcdClient`. The first user of a prefix
starts a :class:`SharedWatch` (its :class:`PrefixWatch` engine runs in the client's task group);
later users join it and see the same decoded endpoints; the last one to leave stops it. Readers
never hold the engine up: snapshot readers are woken and read the latest state, batch readers
(:class:`BatchReader`) get their pending changes merged when they fall behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import anyio

from ..._codec.endpoint import Update
from ..._codec.endpointset import ChangeLog, EndpointSet
from ..._exceptions import EtcdUnavailableError
from ..._logsafe import safe
from ..._taskgroup import TaskHost
from ..transport import Transport
from .prefix import PrefixWatch, WatchBatch, WatcherStatistics

__all__ = ["MAX_PENDING", "BatchReader", "SharedWatch", "WatchHub"]

logger = logging.getLogger("aiodiscovery.watch")

#: Unread batches a reader may have before they are merged into one.
MAX_PENDING = 1024


class BatchReader:
    """One reader's queue of batches: one per etcd revision, merged when it falls far behind.

    The engine never waits for a reader: past :data:`MAX_PENDING` unread batches, they are merged
    key by key into one (the last change of each key wins, a multi-key update stays whole), so a
    stalled reader costs memory for the keys that changed, not for every change.
    """

    def __init__(self, first: WatchBatch) -> None:
        self._queue: deque[WatchBatch] = deque([first])
        self._ready = asyncio.Event()
        self._ready.set()
        self._error: BaseException | None = None

    def push(self, batch: WatchBatch) -> None:
        """Queue ``batch`` (an empty one, a progress notification, is not worth a wake-up)."""
        if not batch.updates:
            return
        queue = self._queue
        queue.append(batch)
        if len(queue) > MAX_PENDING:
            merged: dict[str, Update] = {}
            for pending in queue:
                for update in pending.updates:
                    # Re-inserted so that the merged batch keeps the order of the last changes.
                    merged.pop(update.key, None)
                    merged[update.key] = update
            relist = any(pending.relist for pending in queue)
            queue.clear()
            queue.append(WatchBatch(batch.revision, list(merged.values()), relist))
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """Wake the reader with ``error``."""
        self._error = error
        self._ready.set()

    async def get(self) -> WatchBatch:
        """The next batch (the first call: the full state); waits for one."""
        while not self._queue:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class SharedWatch:
    """The live state of one prefix on one client, and the readers following it."""

    def __init__(self, hub: WatchHub, prefix: str, backoff_cap: float) -> None:
        self.hub = hub
        self.prefix = prefix
        self.engine = PrefixWatch(hub.client, prefix, backoff_cap=backoff_cap)
        self.users = 0
        self.revision = 0
        self.ready = asyncio.Event()
        self.error: BaseException | None = None
        self._snapshot = EndpointSet()
        self._stale = False
        # Which keys each batch changed, so that the pool applies differences, not whole sets.
        self._log = ChangeLog()
        self._listeners: set[Callable[[], None]] = set()
        self._readers: set[BatchReader] = set()
        self._scope: anyio.CancelScope | None = None

    # -- the engine ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the engine until the last user leaves (or etcd refuses this user the prefix)."""
        with anyio.CancelScope() as self._scope:
            try:
                await self.engine.run(self._publish)
            except Exception as exc:
                # Only PermissionDeniedError ends an engine on purpose; anything else is a bug,
                # and either way every reader must hear of it instead of waiting forever.
                logger.warning("watch of %r stopped: %s", safe(self.prefix), safe(exc))
                self._fail(exc)

    def stop(self) -> None:
        """Stop the engine (the last user left)."""
        if self._scope is not None:
            self._scope.cancel()

    def _publish(self, batch: WatchBatch) -> None:
        if batch.updates or batch.relist:
            self._stale = True
            # After a (re)list the difference is not worth working out key by key.
            self._log.record(None if batch.relist else tuple(u.key for u in batch.updates))
        self.revision = batch.revision
        for reader in self._readers:
            reader.push(batch)
        for listener in list(self._listeners):
            listener()
        self.ready.set()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.hub._forget(self)
        for reader in self._readers:
            reader.fail(error)
        for listener in list(self._listeners):
            listener()
        self.ready.set()

    # -- readers ------------------------------------------------------------------------------

    @property
    def snapshot(self) -> EndpointSet:
        """The current endpoint set (taking one costs the same whatever the set's size)."""
        if self._stale:
            log = self._log
            self._snapshot = EndpointSet._of(self.engine.entries, self.revision, log, log.seq)
            self._stale = False
        elif self._snapshot.revision != self.revision:
            self._snapshot = self._snapshot.at_revision(self.revision)
        return self._snapshot

    def statistics(self) -> WatcherStatistics:
        """The engine's counters."""
        return self.engine.statistics()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (it must not block or raise)."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.discard(listener)

    def reader(self) -> BatchReader:
        """A new batch reader whose first batch is the current state."""
        entries = self.engine.entries
        updates = [
            Update.add(key, entries[key].endpoint, lease=entries[key].lease)
            for key in sorted(entries)
        ]
        reader = BatchReader(WatchBatch(self.revision, updates, relist=True))
        self._readers.add(reader)
        return reader

    def drop_reader(self, reader: BatchReader) -> None:
        """Stop feeding ``reader``."""
        self._readers.discard(reader)


class WatchHub:
    """The shared watches of one client, by prefix."""

    def __init__(self, client: Transport, host: TaskHost) -> None:
        self.client = client
        self._host = host
        self._watches: dict[str, SharedWatch] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def shared(self) -> list[SharedWatch]:
        """The prefixes watched now."""
        return list(self._watches.values())

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._watches

    async def join(
        self, prefix: str, *, timeout: float | None = None, backoff_cap: float = 3.0
    ) -> SharedWatch:
        """Join the watch of ``prefix`` (starting it if needed) once it has listed the prefix.

        ``timeout`` bounds the wait for the first list (``None``: wait as long as it takes).
        Raises :class:`EtcdUnavailableError` on timeout, or the watch's permanent error (this
        user may not read the prefix). Every successful join needs one :meth:`leave`.
        """
        await self.client.connect()
        shared = self._watches.get(prefix)
        if shared is None:
            shared = SharedWatch(self, prefix, backoff_cap)
            self._watches[prefix] = shared
            self._host.start_soon(shared.run, name=f"aiodiscovery watch {safe(prefix)}")
        shared.users += 1
        try:
            with anyio.fail_after(timeout):
                await shared.ready.wait()
        except BaseException as exc:
            self.leave(shared)
            if isinstance(exc, TimeoutError):
                raise EtcdUnavailableError(
                    f"could not list {prefix!r} from etcd within {timeout:g} s",
                    code="UNAVAILABLE",
                ) from None
            raise
        if shared.error is not None:
            self.leave(shared)
            raise shared.error
        return shared

    def leave(self, shared: SharedWatch) -> None:
        """Leave ``shared``; the last user to leave stops its etcd watch."""
        shared.users -= 1
        if shared.users <= 0:
            self._forget(shared)
            shared.stop()

    def _forget(self, shared: SharedWatch) -> None:
        if self._watches.get(shared.prefix) is shared:
            del self._watches[shared.prefix]

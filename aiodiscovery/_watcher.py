"""The resilient prefix watch and the live endpoint set it keeps.

:class:`PrefixWatch` is the engine: it lists the prefix, watches from the list revision + 1
and, after any break, resumes from the last revision it saw; when etcd compacted past that
revision or cancelled the watch it lists again and reports the difference, so a delete that
happened while it was away is never lost. It runs inline in whoever iterates it (no task of its
own), which is what :meth:`EndpointManager.watch` needs. :class:`Watcher` runs one engine in a
task it owns and offers the resulting :class:`EndpointSet` to any number of subscribers, each
coalesced to the latest state.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aetcd
import anyio
import grpc
from aetcd import rpc

from ._backoff import Backoff
from ._endpoint import Endpoint, Update, decode_endpoint, parse_target
from ._etcd import (
    KeyValue,
    list_prefix,
    prefix_range_end,
    reauthenticate,
    request_timeout,
    translate_error,
    watch_responses,
)
from ._exceptions import DecodeError, EtcdError, EtcdUnavailableError
from ._taskgroup import exit_task_group

__all__ = ["EndpointSet", "PrefixWatch", "WatchBatch", "Watcher", "WatcherStatistics"]

logger = logging.getLogger("aiodiscovery")


class EndpointSet(Mapping[str, Endpoint]):
    """An immutable snapshot of a service's endpoints (etcd key -> :class:`Endpoint`).

    ``revision`` is the etcd revision the snapshot reflects; :meth:`mod_revision` tells when each
    key was last written, so a re-registration with an unchanged value is still visible. Equality
    compares the endpoints only.
    """

    __slots__ = ("_endpoints", "_mod_revisions", "revision")

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint] | None = None,
        revision: int = 0,
        mod_revisions: Mapping[str, int] | None = None,
    ) -> None:
        self._endpoints = dict(endpoints or {})
        self._mod_revisions = dict(mod_revisions or {})
        self.revision = revision

    def __getitem__(self, key: str) -> Endpoint:
        return self._endpoints[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def at_revision(self, revision: int) -> EndpointSet:
        """The same endpoints, stamped with a newer ``revision`` (shares the storage, no copy)."""
        clone = EndpointSet.__new__(EndpointSet)
        clone._endpoints = self._endpoints
        clone._mod_revisions = self._mod_revisions
        clone.revision = revision
        return clone

    def mod_revision(self, key: str) -> int:
        """The etcd revision of the last write of ``key`` (0 if unknown or absent)."""
        return self._mod_revisions.get(key, 0)

    def addresses(self) -> list[str]:
        """The distinct addresses, in key order (several keys may name one address)."""
        return list(dict.fromkeys(e.addr for e in self._endpoints.values()))

    def __repr__(self) -> str:
        return f"EndpointSet(revision={self.revision}, endpoints={self._endpoints!r})"


@dataclass
class WatcherStatistics:
    """Counters of a watch; ``reconnects`` counts broken streams, ``relists`` full re-reads."""

    endpoints: int = 0
    revision: int = 0
    batches: int = 0
    events: int = 0
    reconnects: int = 0
    relists: int = 0
    compactions: int = 0
    bad_values: int = 0


@dataclass(frozen=True)
class WatchBatch:
    """The changes of one etcd revision, or of one (re)list when ``relist`` is true."""

    revision: int
    updates: list[Update] = field(default_factory=list)
    relist: bool = False


class _Resync(Exception):
    """The watch cannot resume from our revision: list again."""


class PrefixWatch:
    """A list-then-watch of one service prefix that survives every stream fault.

    Iterate :meth:`batches`: the first batch is the full current state (``relist=True``, possibly
    empty), then one batch per etcd revision, and a ``relist`` batch with the difference whenever
    the watch had to start over. An empty batch means etcd vouched that nothing changed under the
    prefix up to its revision (a progress notification). ``endpoints`` and ``statistics`` are
    kept up to date as it goes.
    """

    def __init__(self, client: aetcd.Client, target: str, *, backoff_cap: float = 3.0) -> None:
        self.client = client
        self.prefix = parse_target(target)
        self.endpoints: dict[str, Endpoint] = {}
        # key -> mod revision of its last put: a re-put of the same value is news too (a server
        # back on its old address).
        self.mod_revisions: dict[str, int] = {}
        self.revision = 0
        self.statistics = WatcherStatistics()
        self._backoff = Backoff(initial=0.05, cap=backoff_cap)
        self._bad_keys: set[str] = set()

    async def batches(self) -> AsyncGenerator[WatchBatch, None]:
        """Yield batches forever; only cancellation (or closing the iterator) stops it."""
        listed = False
        failure: BaseException | None = None
        while True:
            try:
                if failure is not None:
                    # After the backoff, not before: a short-lived token renewed first could
                    # expire during the sleep.
                    await reauthenticate(self.client, failure)
                    failure = None
                if not listed:
                    yield await self._relist()
                    listed = True
                # aclosing: when our consumer closes us at a yield, the stream must close now,
                # not whenever the garbage collector finalises it.
                async with contextlib.aclosing(self._watch()) as stream:
                    async for batch in stream:
                        yield batch
            except _Resync:
                listed = False
            except (grpc.aio.AioRpcError, EtcdError) as exc:
                failure = exc
                error = translate_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
                self.statistics.reconnects += 1
                delay = self._backoff.next_delay()
                logger.warning(
                    "watch of %r broke (%s); retrying from revision %d in %.2f s",
                    self.prefix,
                    error,
                    self.revision + 1,
                    delay,
                )
                await anyio.sleep(delay)

    async def _relist(self) -> WatchBatch:
        revision, kvs = await list_prefix(self.client, self.prefix)
        if self.revision:
            self.statistics.relists += 1
            if revision < self.revision:
                logger.warning(
                    "watch of %r: etcd's revision went back from %d to %d (restored from a "
                    "snapshot?); following etcd",
                    self.prefix,
                    self.revision,
                    revision,
                )
        # A key bad before and still bad is warned about once; one gone since is forgotten.
        self._bad_keys &= {kv.key for kv in kvs}
        fresh: dict[str, Endpoint] = {}
        for kv in kvs:
            endpoint = self._decode(kv)
            if endpoint is not None:
                fresh[kv.key] = endpoint
        updates = [Update.delete(k) for k in self.endpoints if k not in fresh]
        updates += [
            Update.add(kv.key, fresh[kv.key], lease=kv.lease)
            for kv in kvs
            if kv.key in fresh
            and (
                self.endpoints.get(kv.key) != fresh[kv.key]
                or self.mod_revisions.get(kv.key) != kv.mod_revision
            )
        ]
        self.endpoints = fresh
        self.mod_revisions = {kv.key: kv.mod_revision for kv in kvs if kv.key in fresh}
        # A list is authoritative, even about a revision lower than the one we had.
        self.revision = revision
        return self._commit(revision, updates, relist=True)

    async def _watch(self) -> AsyncGenerator[WatchBatch, None]:
        create = rpc.WatchCreateRequest(
            key=self.prefix.encode(),
            range_end=prefix_range_end(self.prefix.encode()),
            start_revision=self.revision + 1,
            progress_notify=True,
        )
        async with contextlib.aclosing(watch_responses(self.client, create)) as responses:
            async for response in responses:
                if response.compact_revision:
                    self.statistics.compactions += 1
                    logger.info(
                        "watch of %r: etcd compacted past revision %d (now %d); listing again",
                        self.prefix,
                        self.revision + 1,
                        response.compact_revision,
                    )
                    raise _Resync
                if response.canceled:
                    # Also how etcd refuses an expired token: the next attempt renews it.
                    raise EtcdError(
                        f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}",
                        code="CANCELLED",
                        details=response.cancel_reason,
                    )
                if response.created:
                    self._backoff.reset()
                    continue
                if not response.events:
                    # A progress notification: nothing under our prefix changed up to here. An
                    # empty batch carries that on, so a resume after a break starts past it.
                    if response.header.revision > self.revision:
                        yield self._commit(response.header.revision, [], relist=False)
                    continue
                for revision, events in itertools.groupby(
                    response.events, key=lambda e: e.kv.mod_revision
                ):
                    yield self._apply(revision, list(events))

    def _apply(self, revision: int, events: list[rpc.Event]) -> WatchBatch:
        updates: list[Update] = []
        for event in events:
            key = event.kv.key.decode(errors="replace")
            endpoint = None
            if event.type == rpc.Event.PUT:
                kv = KeyValue(key, event.kv.value, event.kv.lease, event.kv.mod_revision)
                endpoint = self._decode(kv)
            else:
                self._bad_keys.discard(key)
            if endpoint is not None:
                self.endpoints[key] = endpoint
                self.mod_revisions[key] = event.kv.mod_revision
                updates.append(Update.add(key, endpoint, lease=event.kv.lease))
            elif self.endpoints.pop(key, None) is not None:
                # A deleted key, or one whose new value no longer names an endpoint.
                del self.mod_revisions[key]
                updates.append(Update.delete(key))
        self.statistics.events += len(events)
        return self._commit(revision, updates, relist=False)

    def _decode(self, kv: KeyValue) -> Endpoint | None:
        try:
            endpoint = decode_endpoint(kv.key, kv.value)
        except Exception as exc:  # DecodeError, or a decoder bug: only this key may suffer
            exc = exc if isinstance(exc, DecodeError) else DecodeError(kv.key, repr(exc))
            self.statistics.bad_values += 1
            if kv.key not in self._bad_keys:
                self._bad_keys.add(kv.key)
                logger.warning("ignoring endpoint: %s", exc)
            return None
        self._bad_keys.discard(kv.key)
        return endpoint

    def _commit(self, revision: int, updates: list[Update], *, relist: bool) -> WatchBatch:
        self.revision = max(self.revision, revision)
        self.statistics.batches += 1
        self.statistics.revision = self.revision
        self.statistics.endpoints = len(self.endpoints)
        return WatchBatch(revision, updates, relist)


class Watcher:
    """Keeps an :class:`EndpointSet` equal to what etcd holds under one service prefix.

    ``async with Watcher(client, "foo/bar/my-service") as watcher:`` returns once the prefix has
    been listed (or raises :class:`EtcdUnavailableError` after ``start_timeout`` seconds); a task in
    the watcher's own task group then follows every change through stream breaks, member failures
    and compactions. Read :attr:`snapshot`, await :meth:`wait_for_change`, or iterate
    :meth:`snapshots`; a slow reader only ever skips to the latest state and never holds anyone up.
    """

    def __init__(
        self,
        client: aetcd.Client,
        target: str,
        *,
        start_timeout: float | None = None,
        backoff_cap: float = 3.0,
    ) -> None:
        self._watch = PrefixWatch(client, target, backoff_cap=backoff_cap)
        self.target = target
        self.start_timeout = start_timeout
        self._snapshot = EndpointSet()
        self._revision = 0
        self._stale = False
        self._changed = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def prefix(self) -> str:
        """The etcd key prefix watched, ending in ``/``."""
        return self._watch.prefix

    @property
    def snapshot(self) -> EndpointSet:
        """The current endpoint set.

        It is built when first read after a change, so a burst of changes nobody looks at costs
        no copies, and a reader that falls behind skips straight to the latest state.
        """
        if self._stale:
            watch = self._watch
            self._snapshot = EndpointSet(watch.endpoints, self._revision, watch.mod_revisions)
            self._stale = False
        elif self._snapshot.revision != self._revision:
            self._snapshot = self._snapshot.at_revision(self._revision)
        return self._snapshot

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("a Watcher can be entered only once")
        timeout = self.start_timeout or 2 * request_timeout(self._watch.client)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            with anyio.fail_after(timeout):
                await task_group.start(self._run, name=f"aiodiscovery watcher {self.prefix}")
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            if isinstance(exc, TimeoutError):
                raise EtcdUnavailableError(
                    f"could not list {self.prefix!r} from etcd within {timeout:g} s",
                    code="UNAVAILABLE",
                ) from None
            raise
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._task_group is not None
        return await exit_task_group(self._task_group, exc_type, exc, tb)

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        first = True
        async for batch in self._watch.batches():
            if batch.updates:
                self._stale = True
            self._revision = batch.revision
            if first:
                first = False
                task_status.started()
            # Waiters hold the old event; a fresh one makes the next change a new wake-up.
            changed, self._changed = self._changed, anyio.Event()
            changed.set()
            # Do not keep a large first batch alive while waiting for the next one.
            del batch

    async def wait_for_change(self, revision: int | None = None) -> EndpointSet:
        """Wait until the set reflects a revision newer than ``revision`` (by default the
        current one) and return the snapshot."""
        seen = self._revision if revision is None else revision
        while self._revision <= seen:
            await self._changed.wait()
        return self.snapshot

    async def snapshots(self) -> AsyncIterator[EndpointSet]:
        """Yield the current set, then each newer set; a slow consumer gets only the latest."""
        current = self.snapshot
        yield current
        while True:
            current = await self.wait_for_change(current.revision)
            yield current

    def statistics(self) -> WatcherStatistics:
        """Live counters: endpoints, revision, reconnects, relists, compactions, bad values."""
        return WatcherStatistics(**vars(self._watch.statistics))

    def __repr__(self) -> str:
        s = self._watch.statistics
        return (
            f"<Watcher {self.prefix!r} endpoints={s.endpoints} revision={s.revision} "
            f"reconnects={s.reconnects} relists={s.relists} bad_values={s.bad_values}>"
        )

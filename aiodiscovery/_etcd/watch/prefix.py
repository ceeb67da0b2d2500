"""The resilient list-then-watch of one service prefix: the engine under every watch API.

:class:`PrefixWatch` lists the prefix, watches from the list revision + 1 with progress
notifications, and after any break resumes from the last revision it saw (from events and from
progress notifications), with jittered exponential backoff. When etcd compacted past that
revision or cancelled the watch it lists again and reports the difference as one batch, so a
delete that happened while it was away is never lost. It keeps the decoded endpoints of the
prefix and hands each change to one callback; :mod:`.hub` shares one engine among every user of
a prefix on a client.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import immutables
from aetcd import rpc

from ..._backoff import Backoff
from ..._codec.endpoint import Endpoint, Update, decode_endpoint
from ..._codec.endpointset import Entries, Entry
from ..._exceptions import DecodeError, EtcdError, PermissionDeniedError
from ..._logsafe import safe
from ..kv import decode_key, prefix_pages, prefix_range_end, valid_key
from ..transport import Transport
from .badvalues import BadValueLog
from .stream import run_watch

__all__ = ["PrefixWatch", "WatchBatch", "WatcherStatistics"]

logger = logging.getLogger("aiodiscovery.watch")


@dataclass(frozen=True, slots=True)
class WatcherStatistics:
    """Counters of a prefix watch.

    ``reconnects`` counts broken streams (resumed from the last revision), ``relists`` full
    re-reads (after a compaction or a cancel), ``bad_values`` values that named no usable
    endpoint (each dropped its key; a list reports its new ones in one warning, a watch each
    key once, rate-limited).
    """

    endpoints: int = 0
    revision: int = 0
    batches: int = 0
    events: int = 0
    reconnects: int = 0
    relists: int = 0
    compactions: int = 0
    bad_values: int = 0


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The changes of one etcd revision (or of several, for a reader that fell behind), or of
    one (re)list when ``relist`` is true. A multi-key transaction is never split."""

    revision: int
    updates: list[Update] = field(default_factory=list)
    relist: bool = False


class _Resync(Exception):
    """The watch cannot resume from our revision: list again."""


@dataclass(slots=True)
class _Counters:
    batches: int = 0
    events: int = 0
    reconnects: int = 0
    relists: int = 0
    compactions: int = 0
    bad_values: int = 0


class PrefixWatch:
    """A list-then-watch of one prefix that survives every stream fault.

    :meth:`run` calls ``publish`` with the first full state (``relist=True``; its ``updates``
    are left empty, to spare 100,000 of them when nobody has yet asked for batches: the state is
    in ``entries``), then with one batch per etcd revision, a ``relist`` batch with the
    difference whenever the watch had to start over, and an empty batch when etcd vouched that
    nothing changed up to a newer revision (a progress notification). ``entries`` (key ->
    endpoint, lease and mod revision) always describes the state after the last published batch;
    it is never changed in place, so that holding on to it costs nothing: a list leaves a dict,
    which the first change after it turns into a persistent map (``immutables.Map``), which
    each change replaces by a new one sharing all but a few nodes with it.
    """

    def __init__(self, client: Transport, prefix: str, *, backoff_cap: float = 3.0) -> None:
        self.client = client
        self.prefix = prefix
        self.entries: Entries = {}
        self.revision = 0
        self._counts = _Counters()
        self._backoff = Backoff(initial=0.05, cap=backoff_cap)
        # Watches etcd created: a denial after one is not "denied again" (see run()).
        self._created = 0
        self._bad_keys: set[str] = set()
        self._bad_log = BadValueLog(logger, prefix)

    def statistics(self) -> WatcherStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return WatcherStatistics(
            endpoints=len(self.entries),
            revision=self.revision,
            batches=c.batches,
            events=c.events,
            reconnects=c.reconnects,
            relists=c.relists,
            compactions=c.compactions,
            bad_values=c.bad_values,
        )

    async def run(self, publish: Callable[[WatchBatch], None]) -> None:
        """Follow the prefix forever, publishing every change; only cancellation stops it, or a
        :class:`PermissionDeniedError` (this user may not read the prefix)."""
        listed = False
        failure: BaseException | None = None
        denied_generation: object = None
        while True:
            try:
                if failure is not None:
                    # After the backoff, not before: a short-lived token renewed first could
                    # expire during the sleep.
                    await self.client.reauthenticate(failure)
                    failure = None
                if not listed:
                    publish(await self._relist())
                    listed = True
                await self._watch(publish)
            except _Resync:
                listed = False
            except EtcdError as exc:
                if exc.code == "PERMISSION_DENIED":
                    # etcd 3.5.1 refuses a watch made with an expired token with the same words
                    # as a real denial: a renewed token settles it; denied again, it is real.
                    # "Again" means with no watch created in between: a token that served a
                    # watch and expired since is refused like any expired one.
                    token = (self._token(), self._created)
                    if denied_generation == token or not token[0]:
                        raise PermissionDeniedError(
                            f"etcd does not let this client read {self.prefix!r}: {exc.details}",
                            code="PERMISSION_DENIED",
                            details=exc.details,
                        ) from None
                    if await self.client.reauthenticate(exc):
                        denied_generation = (self._token(), self._created)
                        continue
                    # The renewal failed for etcd's trouble ("leader changed", seen in the soak):
                    # no answer about the permission yet, so a break like any other, and the
                    # renewal is tried again after the backoff.
                failure = exc
                self._counts.reconnects += 1
                delay = self._backoff.next_delay()
                logger.warning(
                    "watch of %r broke (%s); retrying from revision %d in %.2f s",
                    safe(self.prefix),
                    safe(exc),
                    self.revision + 1,
                    delay,
                )
                await anyio.sleep(delay)

    def _token(self) -> object:
        metadata = self.client.stream_metadata()
        return tuple(value for name, value in metadata if name == "token")

    async def _relist(self) -> WatchBatch:
        revision = 0
        fresh: dict[str, Entry] = {}
        bad_before, self._bad_keys = self._bad_keys, set()
        newly_bad: list[tuple[str, str]] = []
        decode, entry = self._decode, _new_entry
        async with contextlib.aclosing(prefix_pages(self.client, self.prefix)) as pages:
            async for revision, kvs in pages:  # noqa: B007 (the last page's is the list's)
                with _collector_paused():
                    # The hottest loop of a big list: what decode_key() does, inline.
                    for kv in kvs:
                        key = kv.key.decode("utf-8", "surrogateescape")
                        endpoint = decode(key, kv.value, bad_before, newly_bad)
                        if endpoint is not None:
                            fresh[key] = entry((endpoint, kv.lease, kv.mod_revision))
        self._bad_log.loaded(newly_bad)
        if self.revision:
            self._counts.relists += 1
            if revision < self.revision:
                logger.warning(
                    "watch of %r: etcd's revision went back from %d to %d (restored from a "
                    "snapshot?); following etcd",
                    safe(self.prefix),
                    self.revision,
                    revision,
                )
        old = self.entries
        first = not self.revision
        updates = [] if first else [Update.delete(k) for k in sorted(old) if k not in fresh]
        updates += (
            ()
            if first
            else [
                Update.add(key, entry.endpoint, lease=entry.lease)
                for key, entry in fresh.items()
                if (known := old.get(key)) is None
                or known.mod_revision != entry.mod_revision
                or known.endpoint != entry.endpoint
            ]
        )
        self.entries = fresh
        # A list is authoritative, even about a revision lower than the one we had.
        self.revision = revision
        return self._commit(revision, updates, relist=True)

    async def _watch(self, publish: Callable[[WatchBatch], None]) -> None:
        create = rpc.WatchCreateRequest(
            key=self.prefix.encode(),
            range_end=prefix_range_end(self.prefix.encode()),
            start_revision=self.revision + 1,
            progress_notify=True,
        )

        def handle(response: rpc.WatchResponse) -> None:
            if response.compact_revision:
                self._counts.compactions += 1
                logger.info(
                    "watch of %r: etcd compacted past revision %d (now %d); listing again",
                    safe(self.prefix),
                    self.revision + 1,
                    response.compact_revision,
                )
                raise _Resync
            if response.canceled:
                reason = response.cancel_reason or "no reason given"
                # Also how etcd refuses an expired token: the next attempt renews it.
                raise EtcdError(
                    f"etcd cancelled the watch: {reason}",
                    code="PERMISSION_DENIED" if "permission denied" in reason else "CANCELLED",
                    details=reason,
                )
            if response.created:
                self._created += 1
                self._backoff.reset()
                return
            if not response.events:
                # A progress notification: nothing under our prefix changed up to here. An empty
                # batch carries that on, so a resume after a break starts past it.
                if response.header.revision > self.revision:
                    publish(self._commit(response.header.revision, [], relist=False))
                return
            for revision, events in itertools.groupby(
                response.events, key=lambda e: e.kv.mod_revision
            ):
                publish(self._apply(revision, list(events)))

        await run_watch(self.client, create, handle)

    def _apply(self, revision: int, events: list[rpc.Event]) -> WatchBatch:
        updates: list[Update] = []
        entries = self.entries
        if not isinstance(entries, immutables.Map):
            entries = immutables.Map(entries)
        for event in events:
            key = decode_key(event.kv.key)
            endpoint = None
            if event.type == rpc.Event.PUT:
                endpoint = self._decode(key, event.kv.value, self._bad_keys)
            else:
                self._bad_keys.discard(key)
            if endpoint is not None:
                entries = entries.set(key, Entry(endpoint, event.kv.lease, event.kv.mod_revision))
                updates.append(Update.add(key, endpoint, lease=event.kv.lease))
            elif key in entries:
                # A deleted key, or one whose new value no longer names an endpoint.
                entries = entries.delete(key)
                updates.append(Update.delete(key))
        self.entries = entries
        self._counts.events += len(events)
        return self._commit(revision, updates, relist=False)

    def _decode(
        self,
        key: str,
        value: bytes,
        warned: set[str],
        newly_bad: list[tuple[str, str]] | None = None,
    ) -> Endpoint | None:
        """The endpoint ``value`` names, or None (counted, and reported unless ``key`` is in
        ``warned``, the keys found bad before and still so: each is reported once). A load
        collects the reports in ``newly_bad`` for one summary; a watch logs each (rate-limited).
        """
        try:
            if not (key.isascii() or valid_key(key)):
                raise DecodeError(safe(key), "the key is not valid UTF-8")  # noqa: TRY301
            endpoint = decode_endpoint(key, value, budget=self.client.metadata_budget)
        except Exception as exc:
            # DecodeError is the decoder's only failure; anything else is a bug that must still
            # cost one key, never the watch.
            self._counts.bad_values += 1
            if key not in warned:
                reason = exc.reason if isinstance(exc, DecodeError) else repr(exc)
                if newly_bad is None:
                    self._bad_log.changed(key, reason)
                else:
                    newly_bad.append((key, reason))
            self._bad_keys.add(key)
            return None
        if warned:
            self._bad_keys.discard(key)
        return endpoint

    def _commit(self, revision: int, updates: list[Update], *, relist: bool) -> WatchBatch:
        self.revision = max(self.revision, revision)
        self._counts.batches += 1
        return WatchBatch(revision, updates, relist)


# Entry((a, b, c)) without NamedTuple's Python-level __new__: a big list makes one per key.
_new_entry = functools.partial(tuple.__new__, Entry)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one synchronous stretch of decoding.

    Decoding a page of 20,000 values makes about 60,000 objects and no garbage cycle; without the
    pause the collector runs hundreds of times over every object alive meanwhile, a tenth of the
    time a 100,000-endpoint list takes (benchmarks/bench_fleet.py). No await happens inside, so
    nothing else runs while it is paused; it is left as it was found (off stays off).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

"""A watch-history checker: what clients delivered, held against etcd's own history.

:class:`EtcdHistory` records etcd's history of one prefix through etcd's generated stubs, not
through aiodiscovery: the prefix's state at a first revision, then every event after it (one raw
watch, resumed on any member after a break). :class:`WatchRecord` records what one client
delivered: the batches of ``EndpointManager.watch_batches()``, the update lists of
``EndpointManager.watch()``, or a :class:`~aiodiscovery.Watcher`'s snapshots.
:func:`check_history` holds every record against the history, with the properties etcd's
robustness tests check on watch responses (``tests/robustness/validate/watch.go``), carried over
to batches of updates:

- ordered: revisions never go back; a batch with changes comes at a newer revision than the
  previous batch.
- unique: no key twice in a batch, and no update without an etcd event for its key since the
  previous batch's revision (an event delivered twice, or one that never happened).
- atomic: one revision's changes come in one batch, never split over two.
- reliable: every etcd event since the previous batch is in the batch, with the value etcd holds
  at the batch's revision.
- resumable: the first batch after a (re)list starts right after the list's revision.
- same events: two clients that deliver a batch for the same revision deliver the same updates.
- view: the client's view after each batch (or each snapshot) equals etcd's prefix at that
  revision, decoded as the client decodes it (a bad value drops its key).

A relist batch (the first batch, or the difference after etcd compacted past the watch) replaces
history the client could not see: it is checked as a jump of state that must match etcd's prefix
at its revision, not event by event. Where the recorder itself lost part of the history (it was
compacted past while disconnected), revisions in the hole are counted as unverified, never
guessed.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import grpc
import grpc.aio
from aetcd import rpc

from .. import Endpoint, decode_endpoint
from .._backoff import Backoff
from .._taskgroup import exit_task_group

__all__ = ["EtcdHistory", "HistoryEvent", "Violation"]

_CALL_TIMEOUT = 5.0
# A member that sends nothing (not even the progress asked for) for this long is given up.
_SILENCE = 3.0
_PROGRESS_PERIOD = 0.2
_PUT = 0


def _decoded(state: Mapping[str, bytes]) -> dict[str, Endpoint]:
    """``state`` as the client's view: a key that is not UTF-8, or whose value does not decode,
    is left out, as the watch leaves it out."""
    view: dict[str, Endpoint] = {}
    for key, value in state.items():
        try:
            key.encode()
            view[key] = decode_endpoint(key, value)
        except (UnicodeEncodeError, ValueError):
            continue
    return view


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class HistoryEvent:
    """One etcd event of the prefix: ``value`` is ``None`` for a delete."""

    revision: int
    key: str
    value: bytes | None


@dataclass(frozen=True)
class Violation:
    """One broken property: which, whose record, at which revision, and what was seen."""

    property: str
    client: str
    revision: int | None
    detail: str

    def __str__(self) -> str:
        return f"{self.property}: {self.client} at revision {self.revision}: {self.detail}"


class EtcdHistory:
    """etcd's history of one prefix, recorded with a raw watch while an ``async with`` runs.

    ``async with EtcdHistory(cluster.urls, "svc/") as history:`` lists the prefix (the state at
    :attr:`start_revision`) and watches every event after it, resuming from the next revision on
    any of the comma-separated ``urls`` after a break, with jittered backoff. If etcd compacted
    past it meanwhile it lists again and records the hole in :attr:`holes`: revisions in a hole
    are unknown, not guessed. ``username``/``password`` authenticate (again at every resume, so a
    short token TTL costs nothing). Plain-text client URLs only.

    :meth:`catch_up` waits until the history reaches a revision. The recorder checks etcd's own
    stream too: :attr:`stream_violations` lists any response that broke ordered, unique or atomic.
    """

    def __init__(
        self,
        urls: str,
        prefix: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("EtcdHistory needs a non-empty prefix")
        self.urls = [u.split("://", 1)[-1] for u in urls.split(",") if u]
        self.prefix = prefix
        self.username = username
        self.password = password
        self.start_revision = 0
        #: The revision the history is complete up to.
        self.revision = 0
        self.events: list[HistoryEvent] = []
        #: ``(first, last)`` revisions the recorder could not see (compacted while it was away).
        self.holes: list[tuple[int, int]] = []
        self.stream_violations: list[Violation] = []
        self.resumes = 0
        # Full states at the first list and after each hole: (revision, state), by revision.
        self._anchors: list[tuple[int, dict[str, bytes]]] = []
        self._revisions: list[int] = []
        self._seen: set[tuple[int, str]] = set()
        # The revision every event up to has been recorded: where a resumed watch starts.
        self._safe = 0
        self._advanced: anyio.Event = anyio.Event()
        self._started = anyio.Event()
        self._error: BaseException | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run)
        try:
            with anyio.fail_after(30):
                await self._started.wait()
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await exit_task_group(self._task_group, exc_type, exc, tb)

    # -- reading the history ------------------------------------------------------------------

    def covers(self, revision: int) -> bool:
        """Whether the state at ``revision`` is known."""
        if not self.start_revision <= revision <= self.revision:
            return False
        return not any(first <= revision <= last for first, last in self.holes)

    def state_at(self, revision: int) -> dict[str, bytes] | None:
        """The prefix's raw state (key -> value) at ``revision``; ``None`` if not known."""
        if not self.covers(revision):
            return None
        i = bisect.bisect_right([r for r, _ in self._anchors], revision) - 1
        anchor, state = self._anchors[i]
        state = dict(state)
        low = bisect.bisect_right(self._revisions, anchor)
        high = bisect.bisect_right(self._revisions, revision)
        for event in self.events[low:high]:
            if event.value is None:
                state.pop(event.key, None)
            else:
                state[event.key] = event.value
        return state

    def view_at(self, revision: int) -> dict[str, Endpoint] | None:
        """The prefix at ``revision`` as a client sees it (bad values left out)."""
        state = self.state_at(revision)
        return None if state is None else _decoded(state)

    def events_between(self, low: int, high: int) -> list[HistoryEvent] | None:
        """The events with ``low < revision <= high``; ``None`` if any of them is not known."""
        if not (self.covers(low) and self.covers(high)):
            return None
        if any(low < last and first <= high for first, last in self.holes):
            return None
        return self.events[
            bisect.bisect_right(self._revisions, low) : bisect.bisect_right(self._revisions, high)
        ]

    def change_revisions(self) -> list[int]:
        """Every revision at which the prefix's state may change (events and anchors)."""
        return sorted({r for r, _ in self._anchors} | set(self._revisions))

    async def catch_up(self, revision: int, timeout: float = 15.0) -> None:
        """Wait until the history is complete up to ``revision``."""
        with anyio.fail_after(timeout):
            while self.revision < revision:
                if self._error is not None:
                    raise self._error
                await self._advanced.wait()

    def to_json(self) -> dict[str, Any]:
        """The recorded history as JSON-ready data (values as Latin-1 text, byte for byte)."""

        def text(value: bytes | None) -> str | None:
            return None if value is None else value.decode("latin-1")

        return {
            "prefix": self.prefix,
            "start_revision": self.start_revision,
            "revision": self.revision,
            "anchors": [
                [revision, {k: text(v) for k, v in state.items()}]
                for revision, state in self._anchors
            ],
            "events": [[e.revision, e.key, text(e.value)] for e in self.events],
            "holes": self.holes,
            "stream_violations": [
                [v.property, v.client, v.revision, v.detail] for v in self.stream_violations
            ],
            "resumes": self.resumes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcdHistory:
        """A history written by :meth:`to_json` (to check, not to record: it is not entered)."""

        def raw(value: str | None) -> bytes | None:
            return None if value is None else value.encode("latin-1")

        history = cls("", data["prefix"])
        history.start_revision = data["start_revision"]
        history.revision = data["revision"]
        history._anchors = [
            (revision, {k: v.encode("latin-1") for k, v in state.items()})
            for revision, state in data["anchors"]
        ]
        history.events = [HistoryEvent(r, k, raw(v)) for r, k, v in data["events"]]
        history._revisions = [e.revision for e in history.events]
        history.holes = [(first, last) for first, last in data["holes"]]
        history.stream_violations = [Violation(*v) for v in data["stream_violations"]]
        history.resumes = data["resumes"]
        return history

    # -- recording ----------------------------------------------------------------------------

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            advanced, self._advanced = self._advanced, anyio.Event()
            advanced.set()

    def _anchor(self, revision: int, state: dict[str, bytes]) -> None:
        if self._anchors and revision > self._safe + 1:
            self.holes.append((self._safe + 1, revision - 1))
        self._anchors.append((revision, state))
        if not self._anchors[1:]:
            self.start_revision = revision
        self._safe = max(self._safe, revision)
        self._advance(revision)

    def _record(self, response: Any, start: int, last: list[int]) -> None:
        """Append one watch response's events, checking etcd's own stream as we go: ``start``
        is the revision the watch resumed after, ``last`` the stream's last event revision."""
        events = list(response.events)
        if events and events[0].kv.mod_revision == last[0] > start:
            self.stream_violations.append(
                Violation("atomic", "etcd", last[0], "a revision split over two watch responses")
            )
        for event in events:
            revision = event.kv.mod_revision
            key = event.kv.key.decode("utf-8", "surrogateescape")
            if revision <= start:
                self.stream_violations.append(
                    Violation("resumable", "etcd", revision, f"{key!r}: resumed after {start}")
                )
                continue
            if revision < last[0]:
                self.stream_violations.append(
                    Violation("ordered", "etcd", revision, f"{key!r} after revision {last[0]}")
                )
                continue
            if (revision, key) in self._seen:
                self.stream_violations.append(Violation("unique", "etcd", revision, repr(key)))
                continue
            self._seen.add((revision, key))
            value = event.kv.value if event.type == _PUT else None
            self.events.append(HistoryEvent(revision, key, value))
            self._revisions.append(revision)
            last[0] = self._safe = revision
        if events:
            self._advance(events[-1].kv.mod_revision)
        elif not response.created and response.header.revision:
            # A progress notification: nothing changed up to its revision. (etcd before 3.4.24
            # and 3.5.8 may send one ahead of events still to come, etcd-io/etcd#15220: the
            # resume point is therefore the last event, never a progress revision.)
            self._advance(response.header.revision)

    async def _run(self) -> None:
        backoff = Backoff(initial=0.05, cap=1.0)
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                async with grpc.aio.insecure_channel(url) as channel:
                    await self._list_and_watch(channel)
            except* (grpc.aio.AioRpcError, TimeoutError, _Relist):
                pass
            self.resumes += 1
            await backoff.sleep()

    async def _metadata(self, channel: grpc.aio.Channel) -> list[tuple[str, str]]:
        if self.username is None:
            return []
        auth = rpc.AuthStub(channel)
        request = rpc.AuthenticateRequest(name=self.username, password=self.password or "")
        reply = await auth.Authenticate(request, timeout=_CALL_TIMEOUT)
        return [("token", reply.token)]

    async def _list_and_watch(self, channel: grpc.aio.Channel) -> None:
        metadata = await self._metadata(channel)
        prefix = self.prefix.encode()
        end = _prefix_end(prefix)
        if not self._anchors:
            await self._list(channel, metadata)
        create = rpc.WatchCreateRequest(
            key=prefix, range_end=end, start_revision=self._safe + 1, progress_notify=True
        )
        call = rpc.WatchStub(channel).Watch(metadata=metadata)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            start = self._safe
            last = [start]
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ask_progress, call)
                while True:
                    with anyio.fail_after(_SILENCE):
                        response = await call.read()
                    if response is grpc.aio.EOF:
                        raise TimeoutError("watch stream ended")
                    if response.compact_revision or response.canceled:
                        await self._list(channel, metadata)
                        raise _Relist
                    self._record(response, start, last)
                    self._started.set()
        finally:
            call.cancel()

    async def _ask_progress(self, call: Any) -> None:
        # Progress notifications advance the history while nothing changes, and their absence
        # tells a frozen member: the read above times out.
        while True:
            await anyio.sleep(_PROGRESS_PERIOD)
            await call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

    async def _list(self, channel: grpc.aio.Channel, metadata: list[tuple[str, str]]) -> None:
        prefix = self.prefix.encode()
        request = rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix))
        reply = await rpc.KVStub(channel).Range(request, timeout=_CALL_TIMEOUT, metadata=metadata)
        state = {kv.key.decode("utf-8", "surrogateescape"): kv.value for kv in reply.kvs}
        self._anchor(reply.header.revision, state)
        self._started.set()


class _Relist(Exception):
    """etcd compacted past the history's watch, or cancelled it: the state was listed again."""

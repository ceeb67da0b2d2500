"""Holding what clients delivered against etcd's history: :func:`check_history` (the properties
are listed in :mod:`._history`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import Endpoint, Operation, Update
from ._history import EtcdHistory, Violation
from ._watch_record import Delivery, WatchRecord

__all__ = ["PROPERTIES", "HistoryCheck", "check_history"]

PROPERTIES = ("ordered", "unique", "atomic", "reliable", "resumable", "same_events", "view")


@dataclass
class HistoryCheck:
    """The outcome of :func:`check_history`: ``violations`` (empty when every property held),
    how many deliveries were checked against etcd and how many fell where the history is not
    known (``unverified``)."""

    violations: list[Violation] = field(default_factory=list)
    checked: int = 0
    unverified: int = 0
    relists: int = 0

    @property
    def ok(self) -> bool:
        """Whether every property held."""
        return not self.violations

    def by_property(self) -> dict[str, int]:
        """How many violations of each property (every property named, zeros included)."""
        counts = dict.fromkeys(PROPERTIES, 0)
        for v in self.violations:
            counts[v.property] = counts.get(v.property, 0) + 1
        return counts

    def assert_ok(self) -> None:
        """Raise :class:`AssertionError` listing the first violations, if any."""
        if self.violations:
            shown = "\n".join(str(v) for v in self.violations[:20])
            raise AssertionError(f"{len(self.violations)} watch-history violations:\n{shown}")

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON-ready data."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "unverified": self.unverified,
            "relists": self.relists,
            "violations": self.by_property(),
            "first_violations": [str(v) for v in self.violations[:20]],
        }


def _apply(view: dict[str, Endpoint], updates: Iterable[Update]) -> None:
    for update in updates:
        if update.op is Operation.ADD:
            assert update.endpoint is not None
            view[update.key] = update.endpoint
        else:
            view.pop(update.key, None)


class _Checker:
    def __init__(self, history: EtcdHistory) -> None:
        self.history = history
        self.result = HistoryCheck()
        # Revision -> (window start, updates, client) of the first batch seen for it.
        self.by_revision: dict[int, tuple[int, frozenset[Update], str]] = {}

    def fail(self, prop: str, client: str, revision: int | None, detail: str) -> None:
        self.result.violations.append(Violation(prop, client, revision, detail))

    def record(self, record: WatchRecord) -> None:
        view: dict[str, Endpoint] = {}
        previous: int | None = None
        last_change: int | None = None
        after_list = False
        matched = self.history.start_revision
        for d in record.deliveries:
            name = record.name
            if d.view is not None:
                view = dict(d.view)
            if d.revision is None:
                _apply(view, d.updates)
                self.check_duplicates(name, None, d.updates)
                matched = self.infer(name, view, matched)
                continue
            if previous is not None and d.revision < previous:
                self.fail("ordered", name, d.revision, f"after revision {previous}")
            if d.updates and not d.relist and d.revision == last_change:
                self.fail("atomic", name, d.revision, "the revision's changes came in two batches")
            self.check_duplicates(name, d.revision, d.updates)
            if d.relist:
                self.result.relists += 1
            elif d.view is None and previous is not None and d.revision > previous:
                self.check_window(name, previous, d, view, "resumable" if after_list else None)
            if d.view is None:
                _apply(view, d.updates)
            self.check_view(name, d.revision, view)
            if d.updates or d.relist:
                after_list = d.relist
                last_change = d.revision
            previous = max(previous or 0, d.revision)

    def check_duplicates(self, name: str, revision: int | None, updates: Iterable[Update]) -> None:
        keys: set[str] = set()
        for update in updates:
            if update.key in keys:
                self.fail("unique", name, revision, f"{update.key!r} twice in one batch")
            keys.add(update.key)

    def check_window(
        self, name: str, previous: int, d: Delivery, view: dict[str, Endpoint], label: str | None
    ) -> None:
        assert d.revision is not None
        events = self.history.events_between(previous, d.revision)
        after = self.history.view_at(d.revision)
        if events is None or after is None:
            return
        changed: dict[str, int] = {}
        for event in events:
            changed[event.key] = event.revision
        delivered = {u.key: u for u in d.updates}
        for key, update in delivered.items():
            if key not in changed:
                self.fail(
                    "unique",
                    name,
                    d.revision,
                    f"{update.op.name} {key!r} but etcd has no event for it in "
                    f"({previous}, {d.revision}]: delivered twice, or never happened",
                )
            elif update.endpoint != after.get(key):
                self.fail(
                    "reliable",
                    name,
                    d.revision,
                    f"{update.op.name} {key!r} gives {update.endpoint!r}; "
                    f"etcd holds {after.get(key)!r}",
                )
        for key, revision in changed.items():
            if key in delivered or (key not in after and key not in view):
                # A bad value for a key the client never knew is no change to its view.
                continue
            self.fail(
                label or "reliable",
                name,
                d.revision,
                f"etcd's event at revision {revision} for {key!r} is missing "
                f"(batch covers ({previous}, {d.revision}])",
            )
        if not d.relist and all(e.revision == d.revision for e in events):
            self.compare_clients(name, previous, d)

    def compare_clients(self, name: str, previous: int, d: Delivery) -> None:
        assert d.revision is not None
        updates = frozenset(d.updates)
        seen = self.by_revision.setdefault(d.revision, (previous, updates, name))
        if seen[2] != name and seen[1] != updates:
            self.fail(
                "same_events",
                name,
                d.revision,
                f"{sorted(u.key for u in updates)} where {seen[2]} got "
                f"{sorted(u.key for u in seen[1])}",
            )

    def check_view(self, name: str, revision: int, view: dict[str, Endpoint]) -> None:
        expected = self.history.view_at(revision)
        if expected is None:
            self.result.unverified += 1
            return
        self.result.checked += 1
        if view != expected:
            missing = sorted(set(expected) - set(view))
            extra = sorted(set(view) - set(expected))
            wrong = sorted(k for k in set(view) & set(expected) if view[k] != expected[k])
            self.fail(
                "view",
                name,
                revision,
                f"differs from etcd's prefix: missing {missing}, extra {extra}, wrong {wrong}",
            )

    def infer(self, name: str, view: dict[str, Endpoint], since: int) -> int:
        """The first revision from ``since`` on where etcd's prefix equals ``view``."""
        candidates = [r for r in self.history.change_revisions() if r >= since]
        for revision in [since, *candidates]:
            expected = self.history.view_at(revision)
            if expected is not None and expected == view:
                self.result.checked += 1
                return revision
        if any(self.history.view_at(r) is None for r in candidates):
            self.result.unverified += 1
            return since
        self.fail("view", name, None, f"no revision from {since} on has this view: {sorted(view)}")
        return since


def check_history(history: EtcdHistory, records: Iterable[WatchRecord]) -> HistoryCheck:
    """Hold every record against ``history``; the violations found (see the module's doc).

    Call :meth:`EtcdHistory.catch_up` with the records' newest revision first, so that the
    history covers everything they delivered.
    """
    checker = _Checker(history)
    checker.result.violations.extend(history.stream_violations)
    for record in records:
        checker.record(record)
    return checker.result

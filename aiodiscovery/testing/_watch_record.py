"""What a client's watch delivered, in order: :class:`WatchRecord` (see :mod:`._history`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import Endpoint, EndpointManager, EndpointSet, Update, WatchBatch, Watcher

__all__ = ["Delivery", "WatchRecord"]


@dataclass(frozen=True)
class Delivery:
    """One thing a client delivered: a batch (``updates``), or a snapshot (``view``).

    ``revision`` is ``None`` for ``EndpointManager.watch()``'s batches, which carry none.
    """

    revision: int | None
    updates: tuple[Update, ...] = ()
    relist: bool = False
    view: Mapping[str, Endpoint] | None = None


def _update_to_json(update: Update) -> list[Any]:
    if update.endpoint is None:
        return [update.key]
    return [update.key, update.endpoint.addr, update.endpoint.metadata]


def _update_from_json(item: list[Any]) -> Update:
    if len(item) == 1:
        return Update.delete(item[0])
    return Update.add(item[0], Endpoint(item[1], item[2]))


class WatchRecord:
    """What one client delivered, in order; ``name`` names it in violations.

    Feed it by hand (:meth:`batch`, :meth:`updates`, :meth:`snapshot`) or let it follow a source
    until cancelled (:meth:`follow_batches`, :meth:`follow_updates`, :meth:`follow_watcher`).
    :meth:`to_json` and :meth:`from_json` carry it between processes.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.deliveries: list[Delivery] = []

    def batch(self, batch: WatchBatch) -> None:
        """Record one batch of ``watch_batches()``."""
        self.deliveries.append(Delivery(batch.revision, tuple(batch.updates), batch.relist))

    def updates(self, updates: Iterable[Update]) -> None:
        """Record one batch of ``watch()`` (no revision: it is inferred from etcd's history)."""
        self.deliveries.append(Delivery(None, tuple(updates), relist=not self.deliveries))

    def snapshot(self, snapshot: EndpointSet) -> None:
        """Record one snapshot of a :class:`~aiodiscovery.Watcher`."""
        self.deliveries.append(Delivery(snapshot.revision, view=dict(snapshot)))

    @property
    def last_revision(self) -> int:
        """The newest revision delivered (0 if none carried one)."""
        return max((d.revision or 0 for d in self.deliveries), default=0)

    async def follow_batches(self, manager: EndpointManager) -> None:
        """Record every batch of ``manager.watch_batches()`` until cancelled."""
        async with contextlib.aclosing(manager.watch_batches()) as batches:
            async for batch in batches:
                self.batch(batch)

    async def follow_updates(self, manager: EndpointManager) -> None:
        """Record every batch of ``manager.watch()`` until cancelled."""
        async with contextlib.aclosing(manager.watch()) as batches:
            async for updates in batches:
                self.updates(updates)

    async def follow_watcher(self, watcher: Watcher) -> None:
        """Record every snapshot of an entered ``watcher`` until cancelled or its block ends."""
        snapshots: AsyncIterator[EndpointSet] = watcher.snapshots()
        async for snapshot in snapshots:
            self.snapshot(snapshot)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return {
            "name": self.name,
            "deliveries": [
                {
                    "revision": d.revision,
                    "relist": d.relist,
                    "updates": [_update_to_json(u) for u in d.updates],
                    "view": None
                    if d.view is None
                    else {k: [e.addr, e.metadata] for k, e in d.view.items()},
                }
                for d in self.deliveries
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WatchRecord:
        """A record written by :meth:`to_json`."""
        record = cls(data["name"])
        for d in data["deliveries"]:
            view = d.get("view")
            record.deliveries.append(
                Delivery(
                    d["revision"],
                    tuple(_update_from_json(u) for u in d["updates"]),
                    d["relist"],
                    None if view is None else {k: Endpoint(a, m) for k, (a, m) in view.items()},
                )
            )
        return record

"""EndpointManager: add, delete, atomically update and list the endpoints of one service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable

from aetcd import rpc

from .._codec.endpoint import (
    Endpoint,
    LeaseLike,
    Operation,
    Update,
    decode_endpoint,
    encode_endpoint,
    parse_target,
)
from .._codec.keys import check_key
from .._etcd.client import EtcdClient
from .._etcd.kv import list_prefix, valid_key
from .._etcd.watch.badvalues import BadValueLog
from .._etcd.watch.prefix import WatchBatch
from .._exceptions import DecodeError, TransactionTooLargeError

__all__ = ["DEFAULT_MAX_TXN_OPS", "EndpointManager"]

logger = logging.getLogger("aiodiscovery.manager")

# etcd's default --max-txn-ops.
DEFAULT_MAX_TXN_OPS = 128


class EndpointManager:
    """Manages the endpoints of one service, the counterpart of Go's ``endpoints.Manager``.

    ``target`` is ``"foo/bar/my-service"`` or ``"etcd:///foo/bar/my-service"``; every key the
    manager touches must lie under ``foo/bar/my-service/``. Values are written in Go's format, so
    Go resolvers and ``etcdctl get`` read them unchanged.
    """

    def __init__(
        self, client: EtcdClient, target: str, *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    ) -> None:
        if not isinstance(client, EtcdClient):
            raise TypeError(
                f"EndpointManager needs the client aiodiscovery.connect() returns, got "
                f"{type(client).__name__}"
            )
        self.client = client
        self.target = target
        self.prefix = parse_target(target)
        self.max_txn_ops = max_txn_ops

    def __repr__(self) -> str:
        return f"<EndpointManager prefix={self.prefix!r}>"

    def check_key(self, key: str) -> str:
        """Return ``key`` if it names an endpoint of this service, else raise ValueError."""
        return check_key(self.prefix, key)

    async def add_endpoint(
        self, key: str, endpoint: Endpoint, *, lease: int | LeaseLike | None = None
    ) -> None:
        """Put ``endpoint`` at ``key``; with ``lease``, the key goes when the lease does."""
        await self.update([Update.add(key, endpoint, lease=lease)])

    async def delete_endpoint(self, key: str) -> int:
        """Delete the endpoint at ``key``; return how many keys went (0 for a missing key, which
        is not an error)."""
        self.check_key(key)
        response = await self._commit([_request_op(Update.delete(key))])
        return int(response.responses[0].response_delete_range.deleted)

    async def update(self, updates: Iterable[Update]) -> None:
        """Apply ``updates`` in one etcd transaction: all of them take effect, or none.

        Several updates of one key collapse to the last one (etcd rejects a transaction that
        touches a key twice), so "delete e1, add e1 with a new address" works atomically. Keys are
        checked before anything is written.

        Raises :class:`ValueError` for a key outside the prefix,
        :class:`TransactionTooLargeError` past ``max_txn_ops``, :class:`LeaseNotFoundError` for an
        unknown or expired lease (nothing is written then) and :class:`EtcdError` otherwise.
        """
        last: dict[str, Update] = {}
        for update in updates:
            if not isinstance(update, Update):
                raise TypeError(f"update() takes Update objects, got {type(update).__name__}")
            self.check_key(update.key)
            last.pop(update.key, None)
            last[update.key] = update
        if not last:
            return
        if len(last) > self.max_txn_ops:
            raise TransactionTooLargeError(len(last), self.max_txn_ops)
        await self._commit([_request_op(u) for u in last.values()])

    async def _commit(self, operations: list[rpc.RequestOp]) -> rpc.TxnResponse:
        return await self.client.unary(lambda m: m.kv.Txn, rpc.TxnRequest(success=operations))

    async def list_endpoints(self) -> dict[str, Endpoint]:
        """Return every decodable endpoint of the service, keyed by etcd key.

        Values that are not valid endpoint records are skipped, with one warning naming the first
        few keys (each key at DEBUG).
        """
        batch = await self.list_batch()
        endpoints: dict[str, Endpoint] = {}
        for update in batch.updates:
            assert update.endpoint is not None  # list_batch yields adds only
            endpoints[update.key] = update.endpoint
        return endpoints

    async def list_batch(self) -> WatchBatch:
        """The service's endpoints as one batch of ADD updates (with their leases), in key order,
        at one etcd revision: what :meth:`watch_batches` yields first.

        Values that are not valid endpoint records are skipped, with one warning naming the first
        few keys (each key at DEBUG).
        """
        revision, kvs = await list_prefix(self.client, self.prefix)
        updates: list[Update] = []
        bad: list[tuple[str, str]] = []
        budget = self.client.metadata_budget
        for kv in kvs:
            if not valid_key(kv.key):
                bad.append((kv.key, "the key is not valid UTF-8"))
                continue
            try:
                endpoint = decode_endpoint(kv.key, kv.value, budget=budget)
            except Exception as exc:
                # One key's bad value (or a decoder bug) costs that key, never the listing.
                bad.append((kv.key, exc.reason if isinstance(exc, DecodeError) else repr(exc)))
                continue
            updates.append(Update.add(kv.key, endpoint, lease=kv.lease))
        BadValueLog(logger, self.prefix).loaded(bad)
        return WatchBatch(revision, updates, relist=True)

    async def watch(self) -> AsyncGenerator[list[Update], None]:
        """Yield the service's changes as batches of :class:`Update`, forever.

        The first batch is the current state as adds (empty if there are no endpoints); then comes
        one batch per etcd revision, so a multi-key :meth:`update` arrives together. The watch
        survives stream breaks, member failures and compaction: when it cannot resume it lists
        again and yields the difference as one batch, so no delete is ever lost. Bad values drop
        their key (a delete if it was known) with one warning.

        Iterate it inside ``contextlib.aclosing`` so that leaving the loop early closes the etcd
        stream at once, not whenever the garbage collector gets to it::

            async with contextlib.aclosing(em.watch()) as batches:
                async for batch in batches:
                    ...
        """
        async with contextlib.aclosing(self.watch_batches()) as batches:
            async for batch in batches:
                yield batch.updates

    async def watch_batches(self) -> AsyncGenerator[WatchBatch, None]:
        """Like :meth:`watch`, with each batch's etcd revision and whether it comes from a full
        re-read (``relist``: the first batch, or the difference after etcd compacted past the
        watch). A reader that falls behind gets what it missed merged into one batch, key by key;
        a multi-key update is never split. It shares the client's one watch of the prefix with
        every other reader. Raises the watch's error if etcd stops letting this client read the
        prefix.
        """
        watches = self.client.watches
        shared = await watches.join(self.prefix)
        reader = shared.reader()
        try:
            while True:
                yield await reader.get()
        finally:
            shared.drop_reader(reader)
            watches.leave(shared)


def _request_op(update: Update) -> rpc.RequestOp:
    key = update.key.encode()
    if update.op is Operation.ADD:
        assert update.endpoint is not None  # Update enforces it
        put = rpc.PutRequest(key=key, value=encode_endpoint(update.endpoint), lease=update.lease)
        return rpc.RequestOp(request_put=put)
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))

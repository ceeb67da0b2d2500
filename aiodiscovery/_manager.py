"""EndpointManager: add, delete, atomically update and list the endpoints of one service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable

import aetcd
from aetcd import rpc

from ._endpoint import (
    Endpoint,
    LeaseLike,
    Operation,
    Update,
    decode_endpoint,
    encode_endpoint,
    parse_target,
)
from ._etcd import etcd_errors, list_prefix, request_timeout, rpc_step
from ._exceptions import DecodeError, TransactionTooLargeError
from ._watcher import PrefixWatch

__all__ = ["DEFAULT_MAX_TXN_OPS", "EndpointManager"]

logger = logging.getLogger("aiodiscovery")

# etcd's default --max-txn-ops.
DEFAULT_MAX_TXN_OPS = 128


class EndpointManager:
    """Manages the endpoints of one service, the counterpart of Go's ``endpoints.Manager``.

    ``target`` is ``"foo/bar/my-service"`` or ``"etcd:///foo/bar/my-service"``; every key the
    manager touches must lie under ``foo/bar/my-service/``. Values are written in Go's format, so
    Go resolvers and ``etcdctl get`` read them unchanged.
    """

    def __init__(
        self, client: aetcd.Client, target: str, *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    ) -> None:
        self.client = client
        self.target = target
        self.prefix = parse_target(target)
        self.max_txn_ops = max_txn_ops

    def __repr__(self) -> str:
        return f"<EndpointManager prefix={self.prefix!r}>"

    def check_key(self, key: str) -> str:
        """Return ``key`` if it names an endpoint of this service, else raise ValueError."""
        if not isinstance(key, str):
            raise TypeError(f"an endpoint key must be a string, got {type(key).__name__}")
        if not key.startswith(self.prefix) or key == self.prefix:
            raise ValueError(
                f"key {key!r} is outside the service prefix {self.prefix!r}; endpoint keys look "
                f"like {self.prefix + '<id>'!r}"
            )
        return key

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

    @etcd_errors
    async def _commit(self, operations: list[rpc.RequestOp]) -> rpc.TxnResponse:
        await self.client.connect()
        return await rpc_step(
            self.client.kvstub.Txn(
                rpc.TxnRequest(success=operations),
                timeout=request_timeout(self.client),
                metadata=self.client.metadata,
            )
        )

    async def list_endpoints(self) -> dict[str, Endpoint]:
        """Return every decodable endpoint of the service, keyed by etcd key.

        A value that is not a valid endpoint record is skipped with a warning naming its key.
        """
        _, kvs = await list_prefix(self.client, self.prefix)
        endpoints: dict[str, Endpoint] = {}
        for kv in kvs:
            try:
                endpoints[kv.key] = decode_endpoint(kv.key, kv.value)
            except Exception as exc:  # DecodeError, or a decoder bug: only this key may suffer
                error = exc if isinstance(exc, DecodeError) else DecodeError(kv.key, repr(exc))
                logger.warning("skipping endpoint: %s", error)
        return endpoints

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
        first = True
        async with contextlib.aclosing(PrefixWatch(self.client, self.target).batches()) as batches:
            async for batch in batches:
                if batch.updates or first:
                    first = False
                    yield batch.updates


def _request_op(update: Update) -> rpc.RequestOp:
    key = update.key.encode()
    if update.op is Operation.ADD:
        assert update.endpoint is not None  # Update enforces it
        put = rpc.PutRequest(key=key, value=encode_endpoint(update.endpoint), lease=update.lease)
        return rpc.RequestOp(request_put=put)
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))

"""LeasedKey: one endpoint key a Registrar writes under a lease, and the watch that defends it.

:meth:`LeasedKey.put` writes it under a lease; :meth:`LeasedKey.delete` removes it only while it is
still on our lease, so a key someone else took over stays theirs. :meth:`LeasedKey.until_deleted`
is a raw etcd watch on the one key, from the revision of our own put: a DELETE after it is someone
else's doing (an operator's ``etcdctl del``, or etcd dropping the lease). A PUT under another lease
means another writer took the key: we say so once and leave it, because taking it back could start
a tug of war with a second registrar of the same key.
"""

from __future__ import annotations

import logging

from aetcd import rpc

from .._backoff import Backoff
from .._etcd.rpc import StreamBroken
from .._etcd.transport import Transport
from .._etcd.watch.stream import run_watch
from .._exceptions import EtcdError
from .._logsafe import safe
from .timing import RETRY_CAP, RETRY_INITIAL

__all__ = ["LeasedKey"]

logger = logging.getLogger("aiodiscovery.registrar")


class _KeyDeleted(Exception):
    """The watch saw the key deleted."""


class LeasedKey:
    """The etcd key ``key`` with the encoded endpoint ``value``; ``timeout`` bounds each request.

    The counters say how many requests of each kind were sent.
    """

    def __init__(self, client: Transport, key: str, value: bytes, *, timeout: float) -> None:
        self.client = client
        self.key = key
        self.value = value
        self.timeout = timeout
        self._key_bytes = key.encode()
        self.puts = 0
        self.deletes = 0
        self.watch_streams = 0
        self.key_reads = 0
        self.overwrites = 0
        self._lease = 0
        self._overwrite_reported = False

    async def put(self, lease: int) -> int:
        """Write the key under ``lease``; return the revision of the put."""
        if not lease:
            raise AssertionError("a registration is never written without a lease")
        self.puts += 1
        reply = await self.client.unary(
            lambda m: m.kv.Put,
            rpc.PutRequest(key=self._key_bytes, value=self.value, lease=lease),
            timeout=self.timeout,
        )
        return int(reply.header.revision)

    async def delete(self, lease: int, timeout: float | None = None) -> None:
        """Delete the key if it is still on ``lease`` (someone else's stays)."""
        self.deletes += 1
        on_our_lease = rpc.Compare(
            key=self._key_bytes, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL, lease=lease
        )
        delete = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key_bytes))
        await self.client.unary(
            lambda m: m.kv.Txn,
            rpc.TxnRequest(compare=[on_our_lease], success=[delete]),
            timeout=self.timeout if timeout is None else timeout,
        )

    async def until_deleted(self, lease: int, revision: int) -> str:
        """Watch the key, written under ``lease`` at ``revision``; return once it is deleted."""
        self._lease = lease
        self._overwrite_reported = False
        backoff = Backoff(initial=RETRY_INITIAL, cap=RETRY_CAP)
        # Our own put is at revision: anything after it is someone else's doing.
        start: int | None = revision + 1
        while True:
            try:
                if start is None:
                    # Rather than resume from a revision compaction may have removed meanwhile,
                    # look at the key itself, then watch from that read's revision.
                    current = await self._read_key()
                    if current is None:
                        return "the key was deleted while the watch was down"
                    start = current + 1
                return await self._watch(start, backoff)
            except (EtcdError, StreamBroken) as exc:
                logger.debug("watch of %s: %s; watching again", safe(self.key), safe(exc))
                start = None
            await backoff.sleep()

    async def _watch(self, start: int, backoff: Backoff) -> str:
        """Watch the key from ``start`` on one stream; return once it is deleted.

        Every way the stream itself can fail surfaces as an :class:`EtcdError` (see
        :func:`run_watch`); etcd cancelling the watch as :class:`StreamBroken`.
        """
        self.watch_streams += 1
        create = rpc.WatchCreateRequest(key=self._key_bytes, start_revision=start)

        def handle(reply: rpc.WatchResponse) -> None:
            if reply.canceled:
                raise StreamBroken(
                    f"etcd cancelled the watch ({reply.cancel_reason or 'no reason given'}, "
                    f"compact revision {reply.compact_revision})"
                )
            if reply.created:
                backoff.reset()
            for event in reply.events:
                if event.type == rpc.Event.DELETE:
                    raise _KeyDeleted
                self._note_overwrite(int(event.kv.lease))

        try:
            # The lease's keep-alive already expects an answer from this member every TTL/3.
            await run_watch(self.client, create, handle, probe_idle=False)
        except _KeyDeleted:
            return "the key was deleted (by another client, or with its lease)"
        # run_watch ends only by raising; this keeps a future change from ending silently.
        raise StreamBroken("the watch stream ended")

    async def _read_key(self) -> int | None:
        """The current revision if the key exists, else ``None``."""
        self.key_reads += 1
        reply = await self.client.unary(
            lambda m: m.kv.Range, rpc.RangeRequest(key=self._key_bytes), timeout=self.timeout
        )
        if not reply.kvs:
            return None
        self._note_overwrite(int(reply.kvs[0].lease))
        return int(reply.header.revision)

    def _note_overwrite(self, lease: int) -> None:
        if lease == self._lease or self._overwrite_reported:
            return
        self._overwrite_reported = True
        self.overwrites += 1
        owner = f"lease {lease:x}" if lease else "no lease"
        logger.warning(
            "%s was overwritten by another writer (%s, ours is %x); it will not disappear when "
            "this registrar closes",
            safe(self.key),
            owner,
            self._lease,
        )

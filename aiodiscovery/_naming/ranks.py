"""Dense client ranks for subsetting, handed out by etcd (as Finagle's aperture and LinkedIn's D2
take theirs from ZooKeeper).

Each client of a service that subsets without an integer ``client_id`` claims the lowest free
rank: the key ``_aiodiscovery/ranks/<target>/<rank>`` (value: the client's id, for operators),
created only if absent (one transaction comparing its create revision with 0, so two clients
racing for a rank cannot both win) under a lease of its own, kept alive on one
``LeaseKeepAlive`` stream (every TTL/3). Clients that start together do not all try the lowest
free rank: each first writes ``.../waiting/<lease>`` under its lease, and the i-th of the
waiting clients (in lease ID order, which all of them see alike) tries the i-th free rank, so a
fleet starting at once gets dense ranks in a round or two (``benchmarks/bench_ranks.py``: 300
clients racing on one etcd all ranked, 0 to 299, within 3.3 s); the waiting key goes once
ranked. A client that leaves revokes its lease: its rank is free for the next client that comes,
and no other client's rank changes. The keys live outside every service's prefix, so no resolver
(Go's lists the bare target, ``foo/bar/svc`` also matching ``foo/bar/svc_x``) ever reads them as
endpoints, unless a service is named ``_aiodiscovery...``.

What it costs etcd, per subsetting channel: one key (two while claiming), one lease and its
keep-alive stream, and one small read every TTL to see that the key is still there; no watch. A
lost rank (the lease expired while etcd was out of reach, or someone deleted the key) is claimed
again, preferring the same number, with jittered backoff; the client keeps its place meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
from aetcd import rpc

from .._backoff import Backoff
from .._etcd.client import EtcdClient
from .._etcd.kv import list_prefix
from .._exceptions import EtcdError, LeaseNotFoundError
from .._logsafe import safe
from .._registrar import keepalive, timing
from .._registrar.keepalive import LeaseGrant

__all__ = ["DEFAULT_RANK_TTL", "RANKS_PREFIX", "RankClaim", "rank_prefix"]

logger = logging.getLogger("aiodiscovery.pool")

#: Where every service's client ranks live: outside any service's own prefix.
RANKS_PREFIX = "_aiodiscovery/ranks/"
#: The lease TTL of a rank key: how long a client that died holds its rank.
DEFAULT_RANK_TTL = 10
_REVOKE_TIMEOUT = 2.0
# Where clients wait for a rank, each under its own key (never a rank: not a number).
_WAITING = "waiting/"


def rank_prefix(target: str) -> str:
    """The prefix under which the clients of ``target`` hold their ranks."""
    return f"{RANKS_PREFIX}{target}/"


class RankClaim:
    """One client's rank among the clients of ``target``, held while :meth:`run` runs."""

    def __init__(
        self, client: EtcdClient, target: str, member: str, ttl: int = DEFAULT_RANK_TTL
    ) -> None:
        self.client = client
        self.target = target
        self.member = member
        self.ttl = ttl
        self.rank: int | None = None
        # Ranks claimed so far (more than one: a rank was lost and claimed again).
        self.claims = 0
        self._prefix = rank_prefix(target)
        self._grant: LeaseGrant | None = None
        self._timeout = timing.attempt_timeout(client.timeout, ttl)

    async def claim(self) -> int:
        """Take a rank (granting a lease first if need be), however many clients race for
        ranks; :class:`EtcdError` if etcd cannot be asked. The caller bounds the time."""
        if self._grant is None or self._grant.lost.is_set():
            self._grant = await keepalive.grant_lease(self.client, self.ttl, self._timeout)
        grant = self._grant
        # Clients starting together would all try the lowest free rank, one winner a round.
        # Each says first that it is waiting, under a key of its own: the i-th waiting one (in
        # lease order, which every client sees alike) tries the i-th free rank.
        waiting_key = f"{self._prefix}{_WAITING}{grant.id:x}"
        await self._put(waiting_key, grant.id)
        try:
            return await self._take(grant)
        except LeaseNotFoundError:
            # Expired before it was used: the next claim grants another.
            grant.lost.set()
            raise
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(EtcdError):
                await self.client.unary(
                    lambda m: m.kv.DeleteRange,
                    rpc.DeleteRangeRequest(key=waiting_key.encode()),
                    timeout=self._timeout,
                )

    async def _take(self, grant: LeaseGrant) -> int:
        # Each lost race means another client took a rank: the next listing has fewer free.
        backoff = Backoff(initial=0.01, cap=0.5)
        while True:
            _, keys = await list_prefix(self.client, self._prefix)
            used: set[int] = set()
            ranked: set[int] = set()
            waiting: set[int] = set()
            for kv in keys:
                suffix = kv.key[len(self._prefix) :]
                rank = _rank_of(suffix)
                if rank is not None:
                    used.add(rank)
                    ranked.add(kv.lease)
                elif suffix.startswith(_WAITING):
                    waiting.add(kv.lease)
            queue = sorted(waiting - ranked)
            position = queue.index(grant.id) if grant.id in queue else 0
            free: list[int] = []
            rank = 0
            while len(free) <= position:
                if rank not in used:
                    free.append(rank)
                rank += 1
            # The rank held before first: a client that lost its key keeps its place if it can.
            candidates = [free[position]]
            if self.rank is not None and self.rank not in used:
                candidates.insert(0, self.rank)
            for rank in candidates:
                if await self._create(rank, grant.id):
                    self.rank = rank
                    self.claims += 1
                    return rank
            await backoff.sleep()

    async def run(self, ranked: Callable[[int], None]) -> None:
        """Claim a rank, tell ``ranked``, keep it; claim again whenever it is lost. Revokes the
        lease when cancelled."""
        backoff = Backoff(initial=timing.RETRY_INITIAL, cap=max(timing.RETRY_CAP, self.ttl / 3))
        try:
            while True:
                if self.rank is None or self._grant is None or self._grant.lost.is_set():
                    try:
                        ranked(await self.claim())
                    except EtcdError as exc:
                        logger.debug("%s: no rank yet: %s", self.target, safe(exc))
                        await backoff.sleep()
                        continue
                backoff.reset()
                assert self._grant is not None
                reason = await self._keep(self._grant)
                self._grant.lost.set()
                logger.warning(
                    "%s: subsetting rank %s lost (%s); claiming one again",
                    self.target,
                    self.rank,
                    safe(reason),
                )
                await backoff.sleep()
        finally:
            with anyio.CancelScope(shield=True):
                await self._revoke()

    async def _keep(self, grant: LeaseGrant) -> str:
        """Keep the rank until it is lost; return why."""
        reason = "lost"
        async with anyio.create_task_group() as tg:

            async def alive() -> None:
                nonlocal reason
                reason = await keepalive.keep_alive(
                    self.client, grant, keepalive.KeepAliveCounts(), self._label
                )
                tg.cancel_scope.cancel()

            async def present() -> None:
                nonlocal reason
                reason = await self._check(grant)
                tg.cancel_scope.cancel()

            tg.start_soon(alive)
            tg.start_soon(present)
        return reason

    async def _check(self, grant: LeaseGrant) -> str:
        """Return once the rank key is gone or no longer ours (checked every TTL)."""
        key = f"{self._prefix}{self.rank}"
        while True:
            await anyio.sleep(self.ttl)
            try:
                reply = await self.client.unary(
                    lambda m: m.kv.Range,
                    rpc.RangeRequest(key=key.encode()),
                    timeout=self._timeout,
                )
            except EtcdError:
                # The keep-alive judges etcd being out of reach.
                continue
            if not reply.kvs or int(reply.kvs[0].lease) != grant.id:
                return f"its key {key} was deleted or taken over"

    async def _create(self, rank: int, lease: int) -> bool:
        """Write the key of ``rank`` under ``lease`` if no one holds it; whether it was."""
        key = f"{self._prefix}{rank}".encode()
        absent = rpc.Compare(
            key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
        reply = await self.client.unary(
            lambda m: m.kv.Txn,
            rpc.TxnRequest(
                compare=[absent], success=[rpc.RequestOp(request_put=self._value(key, lease))]
            ),
            timeout=self._timeout,
        )
        return bool(reply.succeeded)

    async def _put(self, key: str, lease: int) -> None:
        await self.client.unary(
            lambda m: m.kv.Put, self._value(key.encode(), lease), timeout=self._timeout
        )

    def _value(self, key: bytes, lease: int) -> rpc.PutRequest:
        # An id is any str: one that is not valid UTF-8 is written escaped.
        value = self.member.encode("utf-8", "backslashreplace")
        return rpc.PutRequest(key=key, value=value, lease=lease)

    async def _revoke(self) -> None:
        grant, self._grant = self._grant, None
        if grant is None:
            return
        # Not revoked (etcd out of reach): the key goes when the lease expires.
        with anyio.move_on_after(_REVOKE_TIMEOUT), contextlib.suppress(EtcdError):
            await self.client.unary(
                lambda m: m.lease.LeaseRevoke,
                rpc.LeaseRevokeRequest(ID=grant.id),
                timeout=_REVOKE_TIMEOUT,
            )

    def _label(self) -> str:
        return f"the subsetting rank {self.rank} of {self.target!r}"


def _rank_of(suffix: str) -> int | None:
    """The rank a key names (None for a key that is not one: registry data is untrusted)."""
    if not (suffix.isascii() and suffix.isdigit()) or len(suffix) > 9:
        return None
    return int(suffix)

"""The etcd members a client talks to: one gRPC channel each, one in use, failover on evidence.

A frozen member (SIGSTOP, a stalled disk, a partition that keeps TCP open) answers nothing and
closes nothing: gRPC's keep-alive ping notices only after 10 s + its timeout, because etcd's ping
policy allows no faster pings (and none on a connection without a stream: see
``client._channel_options``). So every request and stream goes to one member at a time, and
whoever expects an answer from it and does not get one in time (a keep-alive reply due every
TTL/3, a unary deadline, a probe of an idle watch's member) calls :meth:`MemberSet.abandon`:
everyone moves to another member at once, and streams on the abandoned one are told to leave it
(:meth:`Member.abandoned`). Evidence of life (any answer) is recorded with :meth:`MemberSet.heard`,
so idle streams share one cheap probe per member instead of each sending its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from aetcd import rpc

from .._logsafe import safe

__all__ = ["DEFAULT_HEARTBEAT", "Member", "MemberSet", "MemberStatistics"]

logger = logging.getLogger("aiodiscovery.etcd")

#: How long a member we depend on may stay silent before it is probed, and how long the probe may
#: take: a frozen member is left within about twice this.
DEFAULT_HEARTBEAT = 0.5
# A member we left is tried again only when every other one was left more recently: a frozen
# member resumed, or a killed one restarted, gets traffic back once the others fail too.
_COOLDOWN = 10.0
_State = grpc.ChannelConnectivity
_RANK = {_State.READY: 0, _State.IDLE: 1, _State.CONNECTING: 2}


class Member:
    """One etcd member: its URL, a gRPC channel to it alone, and the stubs on that channel."""

    def __init__(self, url: str, channel: grpc.aio.Channel) -> None:
        self.url = url
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)
        self.cluster = rpc.ClusterStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.last_heard = -math.inf
        self.left_at = -math.inf
        # Created on first use: an asyncio.Event made outside a running loop is fine on 3.11, but
        # nothing needs one until a stream waits on it.
        self._abandoned: asyncio.Event | None = None
        self._probe: asyncio.Future[bool] | None = None

    def abandoned(self) -> asyncio.Event:
        """An event set when clients should leave this member; take it when a stream opens."""
        if self._abandoned is None:
            self._abandoned = asyncio.Event()
        return self._abandoned

    def _abandon(self) -> None:
        if self._abandoned is not None:
            self._abandoned.set()
            # Streams opened on this member later wait on a fresh event.
            self._abandoned = None

    def state(self) -> grpc.ChannelConnectivity:
        """The channel's connectivity state (without triggering a connection)."""
        return self.channel.get_state(try_to_connect=False)

    def __repr__(self) -> str:
        return f"<Member {self.url} {self.state().name}>"


@dataclass(frozen=True, slots=True)
class MemberStatistics:
    """Which member is in use, and how often the client moved or probed."""

    active: str
    failovers: int
    probes: int
    failed_probes: int
    last_failover_reason: str | None


class MemberSet:
    """The members of one client, the one in use, and the rules for leaving one."""

    def __init__(self, members: Sequence[Member], *, heartbeat: float = DEFAULT_HEARTBEAT) -> None:
        if not members:
            raise ValueError("a client needs at least one etcd member")
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat!r}")
        self.members = list(members)
        self.heartbeat = heartbeat
        self._active = 0
        self._failovers = 0
        self._probes = 0
        self._failed_probes = 0
        self._last_reason: str | None = None

    @property
    def active(self) -> Member:
        """The member every new request and stream goes to."""
        return self.members[self._active]

    def use(self, member: Member) -> None:
        """Make ``member`` the one in use (at connect: the first that answered)."""
        self._active = self.members.index(member)

    def heard(self, member: Member) -> None:
        """Record that ``member`` answered something just now."""
        member.last_heard = time.monotonic()

    def abandon(self, member: Member, reason: str) -> Member:
        """Leave ``member`` for the best other one, if it is still the one in use.

        Many stream owners may notice the same silence: only the first report moves the client,
        later ones find it already moved. Streams still open on ``member`` are told to leave
        (:meth:`Member.abandoned`). Returns the member now in use.
        """
        member.left_at = time.monotonic()
        member._abandon()
        if member is not self.active:
            return self.active
        self._failovers += 1
        self._last_reason = reason
        if len(self.members) > 1:
            self._active = self.members.index(self._next_after(member))
            logger.warning(
                "etcd member %s: %s; switching to %s", member.url, safe(reason), self.active.url
            )
        else:
            logger.warning("etcd member %s: %s; reconnecting", member.url, safe(reason))
        return self.active

    def _next_after(self, leaving: Member) -> Member:
        start = self.members.index(leaving)
        count = len(self.members)
        others = [self.members[(start + i) % count] for i in range(1, count)]
        now = time.monotonic()

        def rank(member: Member) -> tuple[bool, int, float]:
            # Not recently left first, then the best connectivity, then the one left longest ago;
            # ties keep the list order after the member we leave.
            recently_left = now - member.left_at < _COOLDOWN
            return (recently_left, _RANK.get(member.state(), 3), member.left_at)

        return min(others, key=rank)

    async def alive(self, member: Member) -> bool:
        """Whether ``member`` answers: at once if it was heard from within a heartbeat, else after
        one probe (concurrent callers share it) that must answer within a heartbeat."""
        if time.monotonic() - member.last_heard < self.heartbeat:
            return True
        probe = member._probe
        if probe is None:
            probe = member._probe = asyncio.get_running_loop().create_future()
            try:
                answered = await self._probe(member)
            except BaseException:
                # Our caller was cancelled: whoever waits on this probe re-checks on its own.
                probe.set_result(True)
                raise
            finally:
                member._probe = None
            probe.set_result(answered)
            return answered
        return await asyncio.shield(probe)

    async def _probe(self, member: Member) -> bool:
        self._probes += 1
        try:
            await member.maintenance.Status(rpc.StatusRequest(), timeout=self.heartbeat)
        except grpc.aio.AioRpcError as exc:
            self._failed_probes += 1
            logger.info("etcd member %s did not answer a probe: %s", member.url, exc.code().name)
            return False
        self.heard(member)
        return True

    def statistics(self) -> MemberStatistics:
        """A snapshot of the member in use and the failover counters."""
        return MemberStatistics(
            active=self.active.url,
            failovers=self._failovers,
            probes=self._probes,
            failed_probes=self._failed_probes,
            last_failover_reason=self._last_reason,
        )

"""The demo's client side: callers at a steady rate, counters per phase and per second, and
waits on what the client's channel holds."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import grpc.aio

from aiodiscovery import BalancedChannel, SubchannelStatistics

from .._output import safe, say
from ._protocol import METHOD

__all__ = ["Phase", "Traffic"]

# Generous: no step of the demo relies on a deadline (a crash fails its calls at once), and a
# short one would only turn a slow moment on a loaded machine into a spurious failure.
_CALL_TIMEOUT = 10.0


@dataclass
class Phase:
    """One phase of the demo and the calls that ended in it.

    For the crash phase, ``doomed_in_flight`` counts the calls in flight on the crashed server
    when it died and ``doomed_late`` those the client sent it afterwards, before it saw the
    connection break: the calls that may fail.
    """

    title: str
    started: float
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    doomed_in_flight: int = 0
    doomed_late: int = 0

    @property
    def ok(self) -> int:
        """Successful calls."""
        return sum(self.calls.values())

    @property
    def failed(self) -> int:
        """Failed calls."""
        return sum(self.failures.values())


class Traffic:
    """Concurrent callers at a steady rate; counts per phase and per second."""

    def __init__(self, channel: BalancedChannel, names: dict[str, str], title: str) -> None:
        self.channel = channel
        self.names = names  # address -> server name
        self.phase = Phase(title, anyio.current_time())
        self.phases = [self.phase]
        self.second: Counter[str] = Counter()
        self.second_failures = 0
        self.started = self.ended = self.phase.started
        # Callers that got at least one reply.
        self.callers: set[int] = set()

    def start(self) -> None:
        """Say that the callers start now."""
        self.started = self.phase.started = anyio.current_time()

    def stop(self) -> None:
        """Say that the callers have stopped."""
        self.ended = anyio.current_time()

    def next_phase(self, title: str) -> Phase:
        """End the current phase and start the next."""
        self.phase = Phase(title, anyio.current_time())
        self.phases.append(self.phase)
        return self.phase

    def seconds(self, phase: Phase) -> float:
        """How long ``phase`` ran (so far)."""
        index = self.phases.index(phase)
        later = self.phases[index + 1 :]
        return (later[0].started if later else self.ended) - phase.started

    def subchannel(self, address: str) -> SubchannelStatistics | None:
        """The client's subchannel for ``address`` now, if it has one."""
        return self.channel.statistics().subchannels.get(address)

    async def caller(self, index: int, rate: float) -> None:
        """Call at ``rate`` calls per second, forever."""
        say_hello = self.channel.unary_unary(METHOD)
        request = f"caller-{index}".encode()
        interval = 1 / rate
        # Start the callers out of step, then hold a steady pace (without bursts to catch up).
        next_call = anyio.current_time() + interval * index / 4
        while True:
            await anyio.sleep_until(next_call)
            next_call = max(next_call + interval, anyio.current_time())
            try:
                reply: bytes = await say_hello(request, timeout=_CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                # A call counts in the phase it ended in: one cut short by the crash is the
                # crash's, even if it started just before.
                self.phase.failures[exc.code().name] += 1
                self.second_failures += 1
                continue
            # The reply's last word names the server; a stranger's server can say anything.
            server = safe(reply.decode(errors="replace").rsplit(" ", 1)[-1])
            self.phase.calls[server] += 1
            self.second[server] += 1
            self.callers.add(index)

    def endpoints(self) -> str:
        """The client's subchannels, by server name, with their state unless READY."""
        stats = self.channel.statistics()
        shown = []
        for address, sub in sorted(
            stats.subchannels.items(), key=lambda item: self.names.get(item[0], item[0])
        ):
            label = safe(self.names.get(address, address))
            if sub.draining:
                label += "(draining)"
            elif sub.state != "READY":
                label += f"({sub.state})"
            shown.append(label)
        return " ".join(shown) or "none"

    async def reporter(self, all_names: Callable[[], list[str]]) -> None:
        """Print a line per second: calls per server, failures, endpoints."""
        tick = self.started
        while True:
            tick += 1
            await anyio.sleep_until(tick)
            counts, self.second = self.second, Counter()
            failed, self.second_failures = self.second_failures, 0
            shown = sorted(set(all_names()) | set(counts))
            spread = "  ".join(f"{name} {counts[name]:3d}" for name in shown)
            say(
                f"  {tick - self.started:4.0f}s  calls/s: {spread}  | failed {failed:2d}"
                f"  | endpoints: {self.endpoints()}"
            )

    async def wait_dropped(self, address: str, timeout: float) -> tuple[float, int | None]:
        """Wait until the client no longer holds ``address`` (not even draining).

        Returns how long that took and the last count of picks seen for it (``None`` if it was
        gone at once).
        """
        start = time.monotonic()
        picks = None
        with anyio.move_on_after(timeout):
            # The pool offers no event for this; a short poll is fine for a demo.
            while (sub := self.subchannel(address)) is not None:
                picks = sub.picks
                await anyio.sleep(0.02)
            return time.monotonic() - start, picks
        name = self.names.get(address, address)
        raise TimeoutError(f"the client still held {name} ({address}) after {timeout:g} s")

    async def wait_picked(self, address: str, timeout: float) -> float:
        """Wait until the client has READY ``address`` among its subchannels; return when."""
        start = time.monotonic()
        with anyio.move_on_after(timeout):
            while True:
                sub = self.subchannel(address)
                if sub is not None and sub.state == "READY" and not sub.draining:
                    return time.monotonic() - start
                await anyio.sleep(0.02)
        name = self.names.get(address, address)
        raise TimeoutError(
            f"the client had no READY connection to {name} ({address}) after {timeout:g} s"
        )

"""The demo's client side: callers at a steady rate, counters per phase and per second, and
waits on what the client's channel holds."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import grpc.aio

from aiodiscovery import BalancedChannel

from .._output import safe, say
from ._protocol import METHOD

__all__ = ["Phase", "Traffic"]

# Generous: no step of the demo relies on a deadline (a crash fails its calls at once), and a
# short one would only turn a slow moment on a loaded machine into a spurious failure.
_CALL_TIMEOUT = 10.0


@dataclass
class Phase:
    """One phase of the demo and the calls that ended in it."""

    title: str
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

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

    def __init__(self, channel: BalancedChannel, names: dict[str, str], phase: Phase) -> None:
        self.channel = channel
        self.names = names  # address -> server name
        self.phase = phase
        self.phases = [phase]
        self.second: Counter[str] = Counter()
        self.second_failures = 0
        self.started = anyio.current_time()

    def next_phase(self, title: str) -> Phase:
        """End the current phase and start the next."""
        self.phase = Phase(title)
        self.phases.append(self.phase)
        return self.phase

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

    async def wait_dropped(self, address: str, timeout: float) -> float:
        """Wait until the client no longer holds ``address`` (not even draining); return when."""
        start = time.monotonic()
        with anyio.move_on_after(timeout):
            # The pool offers no event for this; a short poll is fine for a demo.
            while True:
                if address not in self.channel.statistics().subchannels:
                    return time.monotonic() - start
                await anyio.sleep(0.02)
        name = self.names.get(address, address)
        raise TimeoutError(f"the client still held {name} ({address}) after {timeout:g} s")

    async def wait_picked(self, address: str, timeout: float) -> float:
        """Wait until the client has READY ``address`` among its subchannels; return when."""
        start = time.monotonic()
        with anyio.move_on_after(timeout):
            while True:
                sub = self.channel.statistics().subchannels.get(address)
                if sub is not None and sub.state == "READY" and not sub.draining:
                    return time.monotonic() - start
                await anyio.sleep(0.02)
        name = self.names.get(address, address)
        raise TimeoutError(
            f"the client had no READY connection to {name} ({address}) after {timeout:g} s"
        )

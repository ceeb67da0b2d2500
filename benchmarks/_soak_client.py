"""The soak's client: ``--callers`` concurrent callers through ``resolve()``, at ``--rate`` calls/s.

    python benchmarks/_soak_client.py --urls URLS --service soak/echo --expect 4 --results F

It reports ``ready`` once ``--expect`` subchannels are READY, then calls until the soak closes its
stdin (or ``--max-seconds`` pass), and writes every call to ``--results`` as JSON: start and end
(monotonic clock), the address it was sent to, its outcome (``OK`` or the status code) and, for a
reply, which server process answered. It also samples the channel's endpoint set
(``BalancedChannel.statistics()``: subchannels that are not draining) every ``--sample-ms``, and
records every batch its watch of the service delivered (``watch_record``, for the history check).
``--service-config`` (JSON) goes to the channel as ``grpc.service_config``: a retry policy.

Which address a call went to: grpc.aio tells an interceptor nothing about the channel it runs on
(``ClientCallDetails`` has no target) and its call objects have no ``peer()``. The policy is
therefore round_robin through a :class:`Picker` that wraps :class:`RoundRobinPicker` and notes the
address of its last pick: the pool picks synchronously inside ``multicallable(request)``, so the
note read right after that call names this call's subchannel. (A call made while no endpoint is
usable is picked later, or fails at once: its address stays unknown.) Replies carry the server's
name, and ``mismatches`` counts replies from another server than the noted address's: a call the
pool sent again elsewhere (a transparent retry: it never left the client the first time), or a
change in the pool that broke this reasoning. The pool's own count of transparent retries is in the
results beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
from _soak_child import emit, etcd_credentials, run_child, stop_on_eof_or_signal

from aiodiscovery import (
    BalancedChannel,
    EndpointManager,
    Picker,
    RoundRobinPicker,
    SubchannelView,
    connect,
    resolve,
)
from aiodiscovery.testing import WatchRecord

METHOD = "/soak.Echo/Call"
_READY_TIMEOUT = 30.0


class PickNote:
    """The address of the last subchannel picked."""

    def __init__(self) -> None:
        self._address: str | None = None

    def clear(self) -> None:
        """Forget the last pick."""
        self._address = None

    def set(self, address: str) -> None:
        """Note a pick."""
        self._address = address

    def get(self) -> str | None:
        """The address of the last pick since :meth:`clear`, if any."""
        return self._address


class NotingRoundRobin(Picker):
    """round_robin, noting each pick's address in a :class:`PickNote`."""

    def __init__(self, note: PickNote) -> None:
        self._inner = RoundRobinPicker()
        self._note = note

    def update(self, subchannels: Sequence[SubchannelView]) -> None:
        """Pass the usable list on."""
        self._inner.update(subchannels)

    def pick(self) -> SubchannelView:
        """round_robin's pick, noted."""
        sub = self._inner.pick()
        self._note.set(sub.address)
        return sub


class Recorder:
    """Every call and every change of the channel's endpoint set, in compact columns."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, int, int, int]] = []
        self.failures: list[dict[str, Any]] = []
        self.names: dict[str, dict[str | None, int]] = {"address": {}, "outcome": {}, "server": {}}
        self.pool_sets: list[tuple[float, list[str]]] = []
        self.pool_states: list[tuple[float, str, str]] = []

    def index(self, column: str, value: str | None) -> int:
        """``value``'s index in the names of ``column``."""
        table = self.names[column]
        return table.setdefault(value, len(table))

    def call(
        self, start: float, end: float, address: str | None, outcome: str, server: str | None
    ) -> None:
        """Record one call."""
        self.calls.append(
            (
                start,
                end,
                self.index("address", address),
                self.index("outcome", outcome),
                self.index("server", server),
            )
        )

    def to_json(self) -> dict[str, Any]:
        """The record, as JSON-ready columns."""
        columns = list(zip(*self.calls, strict=True)) if self.calls else [(), (), (), (), ()]
        return {
            "calls": {
                "start": [round(t, 6) for t in columns[0]],
                "end": [round(t, 6) for t in columns[1]],
                "address": list(columns[2]),
                "outcome": list(columns[3]),
                "server": list(columns[4]),
            },
            "names": {column: list(table) for column, table in self.names.items()},
            "failures": self.failures,
            "pool_sets": self.pool_sets,
            "pool_states": self.pool_states,
        }


async def sample_pool(channel: BalancedChannel, recorder: Recorder, period: float) -> None:
    """Note every change of the endpoint set and of a subchannel's state."""
    last_set: list[str] | None = None
    last_states: dict[str, str] = {}
    while True:
        now = time.monotonic()
        subchannels = channel.statistics().subchannels
        current = sorted(a for a, s in subchannels.items() if not s.draining)
        if current != last_set:
            recorder.pool_sets.append((now, current))
            last_set = current
        for address, sub in subchannels.items():
            if last_states.get(address) != sub.state:
                recorder.pool_states.append((now, address, sub.state))
                last_states[address] = sub.state
        for address in [a for a in last_states if a not in subchannels]:
            recorder.pool_states.append((now, address, "GONE"))
            del last_states[address]
        await anyio.sleep(period)


async def wait_ready(channel: BalancedChannel, count: int) -> None:
    """Wait until ``count`` subchannels are READY."""
    # channel_ready() returns once any subchannel is READY; the soak starts with all of them.
    # The channel starts IDLE, as grpc's do: connect it first.
    channel.get_state(try_to_connect=True)
    with anyio.fail_after(_READY_TIMEOUT):
        while channel.statistics().by_state().get("READY", 0) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def run(args: argparse.Namespace) -> None:
    """Call until told to stop, then write the record."""
    stop = asyncio.Event()
    stop_on_eof_or_signal(stop)
    note = PickNote()
    recorder = Recorder()
    names: dict[str, str] = json.loads(args.names)
    mismatches = 0
    stopping = anyio.Event()
    max_calls = int(args.rate * args.max_seconds)
    started = 0
    client = await connect(args.urls, **etcd_credentials())
    # What the client's watch of the service delivered, for the soak's history check: the
    # batches of the one watch the pool shares.
    watched = WatchRecord("client")
    options = [("grpc.service_config", args.service_config)] if args.service_config else []
    try:
        channel = await resolve(
            client,
            f"etcd:///{args.service}",
            policy=lambda: NotingRoundRobin(note),
            options=options,
        )
        async with channel:
            await wait_ready(channel, args.expect)
            multicallable = channel.unary_unary(METHOD)
            interval = args.callers / args.rate

            async def caller(seed: int) -> None:
                nonlocal mismatches, started
                rng = random.Random(seed)
                next_at = time.monotonic() + rng.uniform(0, interval)
                while not stopping.is_set() and started < max_calls:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                        if stopping.is_set():
                            break
                    started += 1
                    note.clear()
                    start = time.monotonic()
                    address: str | None = None
                    try:
                        call = multicallable(b"", timeout=args.call_timeout)
                        address = note.get()
                        reply: bytes = await call
                    except grpc.aio.AioRpcError as exc:
                        end = time.monotonic()
                        recorder.call(start, end, address, exc.code().name, None)
                        recorder.failures.append(
                            {
                                "start": start,
                                "end": end,
                                "address": address,
                                "code": exc.code().name,
                                "details": (exc.details() or "")[:300],
                            }
                        )
                    except Exception as exc:  # a failure of the pool itself, not of the call
                        end = time.monotonic()
                        recorder.call(start, end, address, type(exc).__name__, None)
                        recorder.failures.append(
                            {
                                "start": start,
                                "end": end,
                                "address": address,
                                "code": type(exc).__name__,
                                "details": repr(exc)[:300],
                            }
                        )
                    else:
                        server = reply.decode(errors="replace")
                        recorder.call(start, time.monotonic(), address, "OK", server)
                        if address is not None and names.get(address) != server.split("#")[0]:
                            mismatches += 1
                    # Keep the pace without bursts after a slow call.
                    next_at = max(next_at + interval, time.monotonic() - interval)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample_pool, channel, recorder, args.sample_ms / 1000)
                tg.start_soon(watched.follow_batches, EndpointManager(client, args.service))
                async with anyio.create_task_group() as callers:
                    for i in range(args.callers):
                        callers.start_soon(caller, args.seed * 1000 + i)
                    emit("ready", callers=args.callers, rate=args.rate)
                    with anyio.move_on_after(args.max_seconds):
                        await stop.wait()
                    # Each caller finishes its call under way (bounded by its timeout).
                    stopping.set()
                tg.cancel_scope.cancel()
            stats = channel.statistics()
            result = recorder.to_json()
            result["mismatches"] = mismatches
            result["watch_record"] = watched.to_json()
            result["final_statistics"] = {
                "revision": stats.revision,
                "picks": stats.picks,
                "no_endpoint_failures": stats.no_endpoint_failures,
                "transparent_retries": stats.transparent_retries,
                "subchannels": {
                    a: {"state": s.state, "draining": s.draining, "picks": s.picks}
                    for a, s in stats.subchannels.items()
                },
            }
            await anyio.Path(args.results).write_text(json.dumps(result))
            emit("done", calls=len(recorder.calls), failures=len(recorder.failures))
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()


def main() -> None:
    """The client's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--urls", required=True, help="etcd client URLs, comma-separated")
    parser.add_argument("--service", required=True)
    parser.add_argument("--expect", type=int, required=True, help="READY subchannels to wait for")
    parser.add_argument("--names", default="{}", help="JSON map: address -> server name")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1100.0, help="calls/s, all callers together")
    parser.add_argument("--call-timeout", type=float, default=5.0)
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, required=True, help="hard bound on the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service-config", default="", help="the channel's service config JSON")
    parser.add_argument("--results", required=True, help="where to write the JSON results")
    run_child(parser, run)


if __name__ == "__main__":
    main()

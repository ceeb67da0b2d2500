"""The demo's four phases: steady, graceful stop, crash, scale out."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio

from .._output import say
from ._options import DemoOptions
from ._protocol import CHILD_EXIT_TIMEOUT
from ._servers import Server
from ._traffic import Traffic

__all__ = ["run_script"]


async def run_script(
    options: DemoOptions,
    traffic: Traffic,
    servers: dict[str, Server],
    start: Callable[[str], Awaitable[Server]],
    problems: list[str],
) -> None:
    """Run phases 1 to 4 while ``traffic`` flows; note what went wrong in ``problems``.

    A step that cannot go on (a server that does not answer, a wait that runs out) raises
    :class:`RuntimeError` or :class:`TimeoutError`.
    """
    seconds = options.phase_seconds
    say(f"== {traffic.phase.title} ==")
    await anyio.sleep(seconds)

    # 2. graceful: deregister first, wait until the client stops picking it, then stop.
    leaving = servers["s1"]
    traffic.next_phase("2. graceful stop of s1: deregister, drain, then stop")
    say(f"== {traffic.phase.title} ==")
    await leaving.send("deregister")
    await leaving.expect("DEREGISTERED", 10)
    say("  s1: left its Registrar block: lease revoked, key deleted; still serving")
    after, _ = await traffic.wait_dropped(leaving.address, 10)
    say(f"  client: dropped s1 {after:.2f} s later (no new picks, in-flight calls finished)")
    await leaving.send("stop")
    await leaving.expect("STOPPED", 10)
    code = await leaving.wait_exit(CHILD_EXIT_TIMEOUT)
    say(f"  s1: server stopped (exit code {code})")
    await anyio.sleep(seconds)

    # 3. crash: SIGKILL, nobody deregisters; the lease expires on etcd's side.
    crashing = servers["s2"]
    crash = traffic.next_phase(
        f"3. crash of s2: SIGKILL, no deregistration (lease TTL {options.ttl} s)"
    )
    say(f"== {crash.title} ==")
    if not crashing.running:
        raise RuntimeError(f"demo server s2 exited by itself (code {crashing.process.returncode})")
    # Read and kill in one step of the event loop: no call starts in between.
    before = traffic.subchannel(crashing.address)
    crashing.process.send_signal(signal.SIGKILL)
    crash.doomed_in_flight = 0 if before is None else before.in_flight
    await crashing.wait_exit(CHILD_EXIT_TIMEOUT)
    say(
        f"  s2: killed with SIGKILL with {crash.doomed_in_flight} call(s) in flight; its "
        "connections break"
    )
    try:
        after, picks = await traffic.wait_dropped(crashing.address, options.ttl + 15)
    except TimeoutError as exc:
        problems.append(f"the crashed server's endpoint was never dropped ({exc})")
    else:
        if before is not None and picks is not None:
            crash.doomed_late = picks - before.picks
        say(f"  etcd: s2's lease expired; the client dropped s2 {after:.2f} s after the crash")
    await anyio.sleep(seconds / 2)

    # 4. scale out: a new server registers and takes its share.
    traffic.next_phase("4. scale out: s4 starts and registers")
    say(f"== {traffic.phase.title} ==")
    joining = await start("s4")
    traffic.names[joining.address] = joining.name
    after = await traffic.wait_picked(joining.address, 10)
    say(f"  client: picked up s4 {after:.2f} s after it registered")
    await anyio.sleep(seconds)

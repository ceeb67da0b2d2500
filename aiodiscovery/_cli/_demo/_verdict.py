"""What counts as a successful demo, and the summary table that says how it went."""

from __future__ import annotations

from .._output import say, table
from ._traffic import Traffic

__all__ = ["CRASH_CODES", "check", "summary"]

# What a failed call in the crash phase may end with: the connection broke under it (UNAVAILABLE)
# or the client closed the dead server's channel under it (CANCELLED).
CRASH_CODES = {"UNAVAILABLE", "CANCELLED"}


def check(traffic: Traffic) -> list[str]:
    """What went wrong in a demo whose script ran to the end (nothing, we hope)."""
    problems = []
    steady, graceful, crash, scale = traffic.phases
    if steady.failed or graceful.failed or scale.failed:
        problems.append("calls failed outside the crash")
    # Only calls sent to s2 may fail: those in flight when it died (at most one per caller, as
    # each caller waits for its call), and those the client sent it after, in the moment before
    # its connectivity watch saw the connection break (that news and a failed call reach the
    # event loop separately). Any other failure is a call the crash should not have touched.
    doomed = crash.doomed_in_flight + crash.doomed_late
    if crash.failed > doomed:
        problems.append(
            f"{crash.failed} calls failed in the crash, more than the {doomed} sent to s2"
        )
    if unexpected := sorted(set(crash.failures) - CRASH_CODES):
        problems.append(f"crash-phase calls failed with {', '.join(unexpected)}")
    if set(steady.calls) != {"s1", "s2", "s3"}:
        problems.append(f"phase 1 reached {', '.join(sorted(steady.calls))}, not s1, s2 and s3")
    if not scale.calls["s4"]:
        problems.append("s4 took no calls")
    if any(not phase.ok for phase in traffic.phases):
        problems.append("a phase had no successful call")
    return problems


def summary(traffic: Traffic, callers: int, rate: float) -> None:
    """Print the per-phase table and what the callers did."""
    say("== summary ==")
    rows = [("phase", "seconds", "calls", "failed", "by server", "failures")]
    for phase in traffic.phases:
        rows.append(
            (
                phase.title.split(":")[0],
                f"{traffic.seconds(phase):.2f}",
                str(phase.ok),
                str(phase.failed),
                " ".join(f"{name}={count}" for name, count in sorted(phase.calls.items())),
                " ".join(f"{code}={n}" for code, n in sorted(phase.failures.items())) or "-",
            )
        )
    for line in table(rows):
        say("  " + line)
    crash = traffic.phases[2] if len(traffic.phases) > 2 else None
    if crash is not None:
        say(
            f"  phase 3: {crash.failed} failed; sent to s2: {crash.doomed_in_flight} in flight "
            f"when it died, {crash.doomed_late} before the client saw it die"
        )
    made = sum(phase.ok + phase.failed for phase in traffic.phases)
    seconds = traffic.ended - traffic.started
    say(
        f"  {len(traffic.callers)} callers got replies; {made} calls in {seconds:.2f} s "
        f"(at most {callers} x {rate:g}/s asked)"
    )

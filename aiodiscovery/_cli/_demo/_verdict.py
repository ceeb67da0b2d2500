"""What counts as a successful demo, and the summary table that says how it went."""

from __future__ import annotations

from .._output import say, table
from ._traffic import Traffic

__all__ = ["CRASH_CODES", "check", "summary"]

# What a failed call in the crash phase may end with: the connection broke under it (UNAVAILABLE)
# or the client closed the dead server's channel under it (CANCELLED).
CRASH_CODES = {"UNAVAILABLE", "CANCELLED"}


def check(traffic: Traffic, callers: int) -> list[str]:
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
    if unexpected := sorted(set(crash.failures) - CRASH_CODES):
        problems.append(f"crash-phase calls failed with {', '.join(unexpected)}")
    if set(steady.calls) != {"s1", "s2", "s3"}:
        problems.append(f"phase 1 reached {', '.join(sorted(steady.calls))}, not s1, s2 and s3")
    if not scale.calls["s4"]:
        problems.append("s4 took no calls")
    if any(not phase.ok for phase in traffic.phases):
        problems.append("a phase had no successful call")
    return problems


def summary(traffic: Traffic) -> None:
    """Print the per-phase table."""
    say("== summary ==")
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
    for line in table(rows):
        say("  " + line)
    crash = traffic.phases[2] if len(traffic.phases) > 2 else None
    if crash is not None and crash.failed:
        say(
            f"  the {crash.failed} failure(s) in phase 3 were calls that met s2's crash: a crash "
            "cannot drain"
        )

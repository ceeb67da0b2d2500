"""What a soak run shows: failures by cause, registration lapses, client staleness, routing times.

:func:`analyse` turns a run's record (what the soak did, when, and what its children wrote) into
the JSON summary; :func:`table` renders its per-fault-kind view. Pure functions over plain data,
so a kept run directory can be analysed again (``soak.py --analyse DIR``).

Every time is ``time.monotonic()`` of the machine (one clock for all processes); the summary gives
times relative to the moment the client started calling.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

IN_FLIGHT = "in flight on a SIGKILLed server"
AFTER_DEATH = "sent to a SIGKILLed server after it died"
NO_ENDPOINT = "no endpoint"
GRACEFUL = "sent to a server leaving gracefully"
STEADY = "steady (before any fault)"
# What the soak notes, per kind of fault, besides its start and end.
FAULT_MOMENTS = (
    "killed",
    "restarted",
    "frozen",
    "resumed",
    "signalled",
    "died",
    "deregistered",
    "exited",
    "relaunched",
    "registered",
    "isolated",
    "rejoined",
    "replaced",
)


def p99(values: Sequence[float]) -> float | None:
    """The 99th percentile (inclusive method), ``None`` for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class Timeline:
    """A step function over time: the value set at each time, ``initial`` before the first."""

    def __init__(self, steps: Iterable[tuple[float, Any]], initial: Any) -> None:
        ordered = sorted(steps, key=lambda step: step[0])
        self.times = [t for t, _ in ordered]
        self.values = [v for _, v in ordered]
        self.initial = initial

    def at(self, t: float) -> Any:
        """The value at time ``t``."""
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i else self.initial


class Windows:
    """Which fault's window a moment falls in: from a fault's start to the next one's."""

    def __init__(self, faults: Sequence[dict[str, Any]]) -> None:
        self.starts = [f["start"] for f in faults]
        self.faults = faults

    def kind_at(self, t: float) -> str:
        """The kind of the fault whose window holds ``t`` (``STEADY`` before the first)."""
        i = bisect.bisect_right(self.starts, t)
        return self.faults[i - 1]["kind"] if i else STEADY

    def index_at(self, t: float) -> int | None:
        """The index of the fault whose window holds ``t``, ``None`` before the first."""
        i = bisect.bisect_right(self.starts, t)
        return i - 1 if i else None


# ---------------------------------------------------------------------------------------------
# Calls


def classify_failures(
    failures: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]], call_timeout: float
) -> list[tuple[dict[str, Any], str]]:
    """Each failed call with its cause (see the module constants)."""
    kills = [f for f in faults if f["kind"] == "server_kill" and "died" in f]
    graceful = [f for f in faults if f["kind"] == "server_graceful_restart" and "signalled" in f]
    result = []
    for failure in failures:
        address, start, end = failure["address"], failure["start"], failure["end"]
        cause = None
        for kill in kills:
            if kill["address"] != address:
                continue
            back = kill.get("registered", float("inf"))
            signalled, died = kill["signalled"], kill["died"]
            if signalled - call_timeout <= start < died and end >= signalled:
                cause = IN_FLIGHT
                break
            if died <= start < back:
                cause = AFTER_DEATH
                break
        if cause is None and NO_ENDPOINT in failure["details"]:
            cause = NO_ENDPOINT
        if cause is None:
            for restart in graceful:
                back = restart.get("registered", float("inf"))
                if restart["address"] == address and restart["signalled"] <= start < back:
                    cause = GRACEFUL
        result.append((failure, cause or f"other: {failure['code']}"))
    return result


def _calls_by_address(calls: dict[str, Any], names: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Start times of the calls sent to each address, sorted."""
    addresses = names["address"]
    by_address: dict[str, list[float]] = defaultdict(list)
    for start, index in zip(calls["start"], calls["address"], strict=True):
        address = addresses[index]
        if address is not None:
            by_address[address].append(start)
    for starts in by_address.values():
        starts.sort()
    return by_address


def _first_reply_from(calls: dict[str, Any], names: dict[str, list[Any]]) -> dict[str, float]:
    """The start of the first successful call each server incarnation answered."""
    servers, outcomes = names["server"], names["outcome"]
    first: dict[str, float] = {}
    for start, outcome, server in zip(
        calls["start"], calls["outcome"], calls["server"], strict=True
    ):
        tag = servers[server]
        if outcomes[outcome] == "OK" and tag is not None and start < first.get(tag, start + 1):
            first[tag] = start
    return first


def routing_times(
    faults: Sequence[dict[str, Any]],
    calls: dict[str, Any],
    names: dict[str, list[Any]],
    timeline: Sequence[Sequence[Any]],
    service: str,
) -> list[dict[str, Any]]:
    """Per server fault: how long the client kept sending calls to the server that died or left,
    and how long after the new process registered its first call reached it (and whether the old
    key was still in etcd when the new process started: then the client never lost the address,
    and its subchannel may be waiting out a reconnect backoff)."""
    keys = Timeline(((t, frozenset(keys)) for t, _rev, keys in timeline), frozenset())
    by_address = _calls_by_address(calls, names)
    first_reply = _first_reply_from(calls, names)
    rows = []
    for fault in faults:
        if fault["kind"] not in ("server_kill", "server_graceful_restart"):
            continue
        # From the death (SIGKILL) or the deregistration (graceful) until the new process starts.
        gone = fault.get("died") if fault["kind"] == "server_kill" else fault.get("deregistered")
        relaunched = fault.get("relaunched", float("inf"))
        row: dict[str, Any] = {"fault": fault["index"], "kind": fault["kind"]}
        if gone is not None:
            starts = by_address.get(fault["address"], [])
            late = starts[bisect.bisect_left(starts, gone) : bisect.bisect_left(starts, relaunched)]
            row["calls_sent_after"] = len(late)
            row["stop_routing_s"] = (late[-1] - gone) if late else 0.0
        registered, tag = fault.get("registered"), fault.get("incarnation")
        if "relaunched" in fault:
            row["old_key_present"] = f"{service}/{fault['address']}" in keys.at(relaunched)
        if registered is not None and tag is not None:
            first = first_reply.get(tag)
            row["start_routing_s"] = None if first is None else max(0.0, first - registered)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Registrations and the client's view


def key_gaps(
    timeline: Sequence[Sequence[Any]], incarnations: Sequence[dict[str, Any]], service: str
) -> list[dict[str, Any]]:
    """Every stretch during which a live server's key was missing from etcd."""
    gaps = []
    for inc in incarnations:
        begin, end = inc.get("registered"), inc.get("ended")
        if begin is None or end is None or end <= begin:
            continue
        key = f"{service}/{inc['address']}"
        presence = Timeline(((t, key in keys) for t, _rev, keys in timeline), False)
        if not presence.at(begin):
            # The put is committed when the Registrar says so; the observer may hear of it a few
            # milliseconds later. The watch from then on is what counts.
            steps = zip(presence.times, presence.values, strict=True)
            begin = next((t for t, present in steps if t > begin and present), end)
        missing_since = None
        for t, present in zip(presence.times, presence.values, strict=True):
            if t <= begin or t >= end:
                continue
            if not present and missing_since is None:
                missing_since = t
            elif present and missing_since is not None:
                gaps.append({"incarnation": inc["tag"], "start": missing_since, "end": t})
                missing_since = None
        if missing_since is not None:
            gaps.append(
                {"incarnation": inc["tag"], "start": missing_since, "end": end, "open": True}
            )
    for gap in gaps:
        gap["seconds"] = gap["end"] - gap["start"]
    return gaps


def staleness(
    timeline: Sequence[Sequence[Any]],
    pool_sets: Sequence[Sequence[Any]],
    begin: float,
    end: float,
) -> dict[str, Any]:
    """How long the client's endpoint set differed from etcd's after each change of etcd's."""
    truth = Timeline(
        ((t, frozenset(a for a in keys.values() if a)) for t, _rev, keys in timeline), frozenset()
    )
    client = Timeline(((t, frozenset(addrs)) for t, addrs in pool_sets), frozenset())
    moments = sorted({t for t in [*truth.times, *client.times] if begin <= t <= end})
    lags = []
    for t in truth.times:
        if not begin <= t <= end:
            continue
        caught_up = next(
            (m for m in moments[bisect.bisect_left(moments, t) :] if truth.at(m) == client.at(m)),
            None,
        )
        lags.append({"change": t, "lag": (caught_up if caught_up is not None else end) - t})
    # Stretches where the two differed, whoever moved first.
    episodes = []
    differs_since = None
    for m in [begin, *moments]:
        differs = truth.at(m) != client.at(m)
        if differs and differs_since is None:
            differs_since = m
        elif not differs and differs_since is not None:
            episodes.append({"start": differs_since, "seconds": m - differs_since})
            differs_since = None
    if differs_since is not None:
        episodes.append({"start": differs_since, "seconds": end - differs_since, "open": True})
    return {
        "lags": lags,
        "episodes": episodes,
        "final_equal": truth.at(end) == client.at(end),
        "final_truth": sorted(truth.at(end)),
        "final_client": sorted(client.at(end)),
    }


# ---------------------------------------------------------------------------------------------
# The summary


def _stat(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "max": _seconds(max(values)) if values else None,
        "p99": _seconds(p99(values)),
    }


def analyse(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of a run (see the soak's module docstring for the fields)."""
    config = record["config"]
    t0, t_end = record["calls_started"], record["calls_stopped"]
    faults = record["faults"]
    client, observer = record["client"], record["observer"]
    calls, names = client["calls"], client["names"]
    windows = Windows(faults)
    ttl = config["ttl"]

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 3)

    outcomes = Counter(names["outcome"][i] for i in calls["outcome"])
    total = len(calls["start"])
    classified = classify_failures(client["failures"], faults, config["call_timeout"])
    causes = Counter(cause for _, cause in classified)
    other = [(f, c) for f, c in classified if c != IN_FLIGHT]

    gaps = key_gaps(observer["timeline"], record["incarnations"], config["service"])
    lapse_limit = ttl + 1
    lapses = [g for g in gaps if g["seconds"] > lapse_limit]
    stale = staleness(observer["timeline"], client["pool_sets"], t0, t_end)
    lag_values = [lag["lag"] for lag in stale["lags"]]
    routes = routing_times(faults, calls, names, observer["timeline"], config["service"])

    by_kind: dict[str, dict[str, Any]] = {}

    def kind_row(kind: str) -> dict[str, Any]:
        return by_kind.setdefault(
            kind,
            {
                "faults": 0,
                "failed_in_flight": 0,
                "failed_other": 0,
                "failed_after_death": 0,
                "lapses": 0,
                "max_key_gap_s": 0.0,
                "max_staleness_s": 0.0,
                "max_stop_routing_s": None,
                "max_start_routing_s": None,
                "registrar_losses": 0,
            },
        )

    kind_row(STEADY)
    for fault in faults:
        kind_row(fault["kind"])["faults"] += 1
    for failure, cause in classified:
        row = kind_row(windows.kind_at(failure["end"]))
        row["failed_in_flight" if cause == IN_FLIGHT else "failed_other"] += 1
        row["failed_after_death"] += cause == AFTER_DEATH
    for gap in gaps:
        row = kind_row(windows.kind_at(gap["start"]))
        row["max_key_gap_s"] = max(row["max_key_gap_s"], gap["seconds"])
        row["lapses"] += gap["seconds"] > lapse_limit
    for lag in stale["lags"]:
        row = kind_row(windows.kind_at(lag["change"]))
        row["max_staleness_s"] = max(row["max_staleness_s"], lag["lag"])
    for route in routes:
        row = kind_row(route["kind"])
        for field, value in (
            ("max_stop_routing_s", route.get("stop_routing_s")),
            ("max_start_routing_s", route.get("start_routing_s")),
        ):
            if value is not None:
                row[field] = value if row[field] is None else max(row[field], value)
    for inc in record["incarnations"]:
        for event in inc.get("losses", []):
            kind_row(windows.kind_at(event["t"]))["registrar_losses"] += 1
    for row in by_kind.values():
        for field, value in row.items():
            if field.endswith("_s") and value is not None:
                row[field] = round(value, 4)

    reasons = []
    if not total:
        reasons.append("no call was made")
    if other:
        reasons.append(f"{len(other)} failed calls other than in flight on a SIGKILLed server")
    if lapses:
        reasons.append(f"{len(lapses)} registration lapses (key missing > {lapse_limit} s)")
    if record["tracebacks"]:
        reasons.append(f"{len(record['tracebacks'])} tracebacks in child stderr")
    if record["crashed"]:
        reasons.append(f"{len(record['crashed'])} children exited with an error")
    if record["leaked"]:
        reasons.append(f"{len(record['leaked'])} leaked processes")
    history = record.get("history")
    if history is not None and not history["ok"]:
        broken = ", ".join(f"{k} {v}" for k, v in history["violations"].items() if v)
        reasons.append(f"watch history invariants broken: {broken}")
    # One line each: an etcdctl error brings its log lines along.
    reasons += [f"harness: {' '.join(e.split())[:300]}" for e in record["errors"]]

    def stops(kind: str) -> list[float]:
        return [r["stop_routing_s"] for r in routes if r["kind"] == kind and "stop_routing_s" in r]

    start = [r["start_routing_s"] for r in routes if r.get("start_routing_s") is not None]
    duration = t_end - t0
    return {
        "config": config,
        "duration_s": round(duration, 2),
        "calls": {
            "total": total,
            "ok": outcomes.get("OK", 0),
            "failed": total - outcomes.get("OK", 0),
            "rate_per_s": round(total / duration, 1) if duration > 0 else None,
            "attribution_mismatches": client["mismatches"],
            "transparent_retries": client["final_statistics"].get("transparent_retries", 0),
        },
        "failures": {
            "in_flight_on_sigkilled_server": causes.get(IN_FLIGHT, 0),
            "other": len(other),
            "by_cause": dict(causes),
            "other_samples": [
                {
                    "t": rel(f["end"]),
                    "cause": c,
                    "address": f["address"],
                    "code": f["code"],
                    "details": f["details"][:160],
                    "fault": windows.index_at(f["end"]),
                }
                for f, c in other[:10]
            ],
        },
        "registration": {
            "lapse_limit_s": lapse_limit,
            "lapses": len(lapses),
            "key_gaps": len(gaps),
            "max_key_gap_s": _seconds(max((g["seconds"] for g in gaps), default=0.0)),
            "gaps": [
                {
                    "incarnation": g["incarnation"],
                    "t": rel(g["start"]),
                    "seconds": _seconds(g["seconds"]),
                    "fault": windows.index_at(g["start"]),
                    **({"open": True} if g.get("open") else {}),
                }
                for g in gaps
            ],
            "registrar_losses": [
                {"incarnation": inc["tag"], "t": rel(e["t"]), "reason": e.get("reason")}
                for inc in record["incarnations"]
                for e in inc.get("losses", [])
            ],
        },
        "client_staleness": {
            "sample_period_s": config["sample_ms"] / 1000,
            "changes": len(lag_values),
            "max_s": _seconds(max(lag_values, default=0.0)),
            "p99_s": _seconds(p99(lag_values)),
            "episodes_over_100ms": [
                {
                    "t": rel(e["start"]),
                    "seconds": _seconds(e["seconds"]),
                    "fault": windows.index_at(e["start"]),
                }
                for e in stale["episodes"]
                if e["seconds"] > 0.1
            ],
            "final_equal": stale["final_equal"],
            "final_etcd": stale["final_truth"],
            "final_client": stale["final_client"],
        },
        "routing": {
            "stop_after_sigkill_s": _stat(stops("server_kill")),
            "stop_after_deregistration_s": _stat(stops("server_graceful_restart")),
            "start_after_registration_s": _stat(start),
            "per_fault": [
                {k: _seconds(v) if k.endswith("_s") else v for k, v in r.items()} for r in routes
            ],
        },
        "by_fault_kind": by_kind,
        "faults": [
            {
                "index": f["index"],
                "kind": f["kind"],
                "target": f["target"],
                "t": rel(f["start"]),
                "recovered_t": rel(f.get("end")),
                **{f"{k}_t": rel(v) for k, v in f.items() if k in FAULT_MOMENTS},
                **({"incarnation": f["incarnation"]} if "incarnation" in f else {}),
            }
            for f in faults
        ],
        "history": history,
        "observer": observer["members"],
        "tracebacks": record["tracebacks"],
        "crashed_processes": record["crashed"],
        "leaked_processes": record["leaked"],
        "harness_errors": record["errors"],
        "verdict": {"pass": not reasons, "reasons": reasons},
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(summary: dict[str, Any]) -> list[list[str]]:
    """Rows (header first) of the per-fault-kind table."""
    rows = [
        [
            "fault kind",
            "faults",
            "failed: in flight on killed",
            "failed: other",
            "of which sent to a dead server",
            "lapses",
            "max key gap s",
            "registrar losses",
            "max client staleness s",
            "max stop routing s",
            "max start routing s",
        ]
    ]
    for kind, row in summary["by_fault_kind"].items():
        rows.append(
            [
                kind,
                str(row["faults"]) if kind != STEADY else "-",
                str(row["failed_in_flight"]),
                str(row["failed_other"]),
                str(row["failed_after_death"]),
                str(row["lapses"]),
                _cell(row["max_key_gap_s"]),
                str(row["registrar_losses"]),
                _cell(row["max_staleness_s"]),
                _cell(row["max_stop_routing_s"]),
                _cell(row["max_start_routing_s"]),
            ]
        )
    return rows

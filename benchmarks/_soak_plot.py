"""The soak's timeline picture: calls/s, failures, faults, client staleness, registration gaps.

Drawn with matplotlib, from the optional plotting extra (``pip install 'aiodiscovery[plot]'``);
without it :func:`plot_timeline` draws nothing and says so, and the text report is all there is.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

_COLOURS = {
    "leader_kill": "tab:red",
    "follower_kill": "tab:orange",
    "member_freeze": "tab:blue",
    "compaction": "tab:gray",
    "server_graceful_restart": "tab:green",
    "server_kill": "tab:brown",
    "mass_deletion": "tab:pink",
    "member_partition": "tab:purple",
    "member_latency": "tab:olive",
    "member_replace": "tab:cyan",
}


def per_second(times: list[float], length: float) -> list[int]:
    """How many of ``times`` (seconds from the start) fall in each second of ``length``."""
    counts = Counter(int(t) for t in times if 0 <= t < length)
    return [counts.get(i, 0) for i in range(math.ceil(length))]


def plot_timeline(record: dict[str, Any], summary: dict[str, Any], path: Path) -> bool:
    """Draw the run's timeline into ``path`` (PNG); False if matplotlib is not installed."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (optional: the plotting extra)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    t0, length = record["calls_started"], summary["duration_s"]
    calls, names = record["client"]["calls"], record["client"]["names"]
    ok_index = names["outcome"].index("OK") if "OK" in names["outcome"] else -1
    starts = [t - t0 for t in calls["start"]]
    ok = [t for t, o in zip(starts, calls["outcome"], strict=True) if o == ok_index]
    failed = [f["end"] - t0 for f in record["client"]["failures"]]
    figure, (rate, stale, gaps) = plt.subplots(
        3, 1, sharex=True, figsize=(14, 8), height_ratios=[3, 1.4, 1.6]
    )
    seconds = list(range(math.ceil(length)))
    rate.plot(seconds, per_second(ok, length), color="tab:blue", lw=1, label="calls/s (OK)")
    lost = per_second(failed, length)
    rate.bar(seconds, lost, color="tab:red", width=1.0, align="edge", label="failed calls/s")
    rate.set_ylabel("calls/s")
    for fault in summary["faults"]:
        begin, end = fault["t"], fault["recovered_t"] or fault["t"]
        colour = _COLOURS.get(fault["kind"], "black")
        for axis in (rate, stale, gaps):
            axis.axvspan(begin, max(end, begin + 0.3), color=colour, alpha=0.15, lw=0)
        rate.text(
            begin,
            1.01,
            fault["kind"],
            transform=rate.get_xaxis_transform(),
            rotation=60,
            fontsize=7,
            color=colour,
            ha="left",
            va="bottom",
        )
    rate.legend(loc="lower left", fontsize=8)
    episodes = summary["client_staleness"]["episodes_over_100ms"]
    stale.vlines([e["t"] for e in episodes], 0, [e["seconds"] for e in episodes], color="k")
    stale.set_ylabel("client stale s\n(episodes > 0.1 s)")
    servers = sorted({g["incarnation"].split("#")[0] for g in summary["registration"]["gaps"]})
    for gap in summary["registration"]["gaps"]:
        row = servers.index(gap["incarnation"].split("#")[0])
        lapse = gap["seconds"] > summary["registration"]["lapse_limit_s"]
        gaps.hlines(
            row,
            gap["t"],
            gap["t"] + gap["seconds"],
            lw=6,
            color="tab:red" if lapse else "tab:orange",
        )
    gaps.set_yticks(range(len(servers)), servers)
    gaps.set_ylim(-1, max(len(servers), 1))
    gaps.set_ylabel("key missing\n(red: lapse)")
    gaps.set_xlabel("seconds since the client started calling")
    gaps.set_xlim(0, length)
    c = summary["config"]
    verdict = "PASS" if summary["verdict"]["pass"] else "FAIL"
    figure.suptitle(
        f"soak {c['duration']:g} s, seed {c['seed']}, ttl {c['ttl']} s, "
        f"retry {'on' if c.get('retry') else 'off'}, auth {'on' if c.get('auth') else 'off'}: "
        f"{verdict}",
        y=0.995,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True

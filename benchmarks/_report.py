"""What the issue-13 benchmarks print around their tables: the run's conditions, and spreads."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from importlib.metadata import version


class Run:
    """Times a benchmark run and notes the machine's load (others may share it)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.load = os.getloadavg()[0]

    def describe(self, setup: str) -> str:
        """The line above the table: versions, CPUs, ``setup``, duration and load."""
        return (
            f"Python {platform.python_version()} | grpcio {version('grpcio')} | "
            f"{os.cpu_count()} CPUs | {setup} | run took "
            f"{time.perf_counter() - self.started:.0f} s | load average {self.load:.1f} at "
            f"start, {os.getloadavg()[0]:.1f} at end"
        )


def quartiles(values: Sequence[float], digits: int = 0, unit: str = "") -> str:
    """The median of ``values``, with the quartiles in brackets once there are four or more."""
    median = statistics.median(values)
    if len(values) < 4:
        return f"{median:.{digits}f}{unit}"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.{digits}f}{unit} ({q1:.{digits}f}-{q3:.{digits}f})"

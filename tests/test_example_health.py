"""examples/health_drain.py runs against the session's etcd and drains a server by its health."""

from __future__ import annotations

import re
import sys

from aiodiscovery.testing import EtcdServer

from .processes import ROOT, run


def test_health_drain_example(etcd: EtcdServer, service: str) -> None:
    command = [
        sys.executable,
        str(ROOT / "examples" / "health_drain.py"),
        "--endpoints",
        etcd.url,
        "--service",
        service,
        "--calls",
        "100",
    ]
    result = run(command, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:3] == ["a: NOT_SERVING; the pool stops picking it", "a: drained and stopped"]
    assert re.fullmatch(r"after: \{'a': \d+, 'b': \d+\}; calls to a after it drained: 0", lines[3])
    assert lines[4] == "0 calls failed"

"""ORCA load reports across languages: what a grpc-go client receives from our LoadReporter, and
what grpcio's own client does with the same per-call trailer.

grpc-go 1.33 (Debian) has no orca package, so the Go client (orca_probe.go) prints the raw bytes it
received and Python decodes them: the bytes on the wire, as a Go client sees them.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import LoadReport, LoadReporter
from aiodiscovery._orcaproto import TRAILER, decode_report, encode_report, messages

from ..servers import method
from ..test_load_balancing import LoadedServer

pytestmark = pytest.mark.anyio


async def go(probe: Path, *args: str) -> list[str]:
    result = await anyio.run_process([str(probe), *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().split()


async def test_a_go_client_reads_the_per_call_report_grpcio_keeps_to_itself(
    orca_probe: Path,
) -> None:
    reporter = LoadReporter(window=60)
    reporter.set_qps(120.0)
    reporter.set_application_utilization(0.4)
    reporter.set_utilization("disk", 0.25)
    async with LoadedServer("s", reporter) as server:
        lines = await go(orca_probe, "call", "-addr", server.address, "-method", method("Unary"))
        assert lines[-1] == "END" and len(lines) == 2, lines
        report = decode_report(bytes.fromhex(lines[0]))
        assert report == LoadReport(
            qps=120.0, application_utilization=0.4, utilization={"disk": 0.25}
        )
        # A handler's own costs and metrics go in its call's trailer, over the server's.
        lines = await go(orca_probe, "call", "-addr", server.address, "-method", method("Cost"))
        report = decode_report(bytes.fromhex(lines[0]))
        assert report is not None
        assert dict(report.request_cost) == {"rows": 7.0}
        assert dict(report.named_metrics) == {"queue": 0.5}
        assert report.qps == 120.0
        # A failed call reports too; the handler's own trailing metadata stays beside it.
        lines = await go(orca_probe, "call", "-addr", server.address, "-method", method("Fail"))
        assert lines[0] == "ERR" and lines[-1] == "END"
        assert decode_report(bytes.fromhex(lines[-2])) is not None
        # The same trailer never reaches a grpcio client: its C core consumes the key, which is
        # why our policies read the out-of-band stream instead.
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = channel.unary_unary(method("Meta"))(b"", metadata=(("x-test", "v"),))
            await call
            trailing = dict(await call.trailing_metadata())
        assert trailing == {"x-echo": "v"}


async def test_a_go_client_reads_the_out_of_band_stream(orca_probe: Path) -> None:
    reporter = LoadReporter(window=60, min_report_interval=0.05)
    reporter.set_cpu_utilization(0.3)
    reporter.set_named_metric("queue", 12.0)
    request = messages()[1]()
    request.report_interval.nanos = 50_000_000
    async with LoadedServer("s", reporter) as server:
        lines = await go(
            orca_probe,
            "stream",
            "-addr",
            server.address,
            "-request",
            request.SerializeToString().hex(),
            "-count",
            "2",
        )
    expected = encode_report(LoadReport(cpu_utilization=0.3, named_metrics={"queue": 12.0}))
    assert [bytes.fromhex(line) for line in lines] == [expected, expected]
    assert TRAILER == "endpoint-load-metrics-bin"

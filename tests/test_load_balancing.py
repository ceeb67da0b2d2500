"""Load-aware balancing: ORCA load reports (A51), weighted_round_robin (A58, A114, A100 slow
start) and least_request (A48), with real etcd, real grpc.aio servers and real load."""

from __future__ import annotations

import contextlib
import struct
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    EtcdClient,
    LeastRequest,
    LoadReport,
    LoadReporter,
    SlowStart,
    WeightedRoundRobin,
    call_load,
    report_utilization,
    resolve,
)
from aiodiscovery._orcaproto import STREAM_METHOD, decode_report, encode_report, messages

from .faulty_servers import registered
from .helpers import until
from .servers import EchoServer, method

pytestmark = pytest.mark.anyio

# The report grpc-go's own end-to-end test expects in a unary call's trailer
# (orca/call_metrics_test.go, TestE2ECallMetricsUnary): CpuUtilization 1.0, MemUtilization 0.9,
# RequestCost {"queryCost": 25}, Utilization {"queueSize": 0.75}, as Go's proto.Marshal writes it:
# fields in number order, each map entry a length-delimited message of key (1) and value (2).
GO_TRAILER = bytes.fromhex(
    "09" "000000000000f03f"  # 1 cpu_utilization, double 1.0
    "11" "cdccccccccccec3f"  # 2 mem_utilization, double 0.9
    "22" "14" "0a" "09" "7175657279436f7374" "11" "0000000000003940"  # 4 request_cost
    "2a" "14" "0a" "09" "717565756553697a65" "11" "000000000000e83f"  # 5 utilization
)  # fmt: skip


def go_report(qps: float, cpu: float, eps: float = 0.0, application: float = 0.0) -> bytes:
    """A report as a grpc-go server's recorder sends it, written byte by byte from the wire
    format (tag = field number << 3 | 1 for a double), not by our encoder."""
    data = struct.pack("<Bd", 1 << 3 | 1, cpu)
    for number, value in ((6, qps), (7, eps), (9, application)):
        if value:
            data += struct.pack("<Bd", number << 3 | 1, value)
    return data


# -- the protocol ----------------------------------------------------------------------------


def test_grpc_go_trailer_bytes_decode_and_encode_back_identically() -> None:
    report = decode_report(GO_TRAILER)
    assert report == LoadReport(
        cpu_utilization=1.0,
        mem_utilization=0.9,
        request_cost={"queryCost": 25.0},
        utilization={"queueSize": 0.75},
    )
    assert encode_report(report) == GO_TRAILER


def test_reports_are_untrusted_input() -> None:
    assert decode_report(b"\xff\xff\xff") is None
    assert decode_report(b"") == LoadReport()
    nan = struct.pack("<Bd", 1 << 3 | 1, float("nan")) + struct.pack("<Bd", 6 << 3 | 1, 5.0)
    assert decode_report(nan) == LoadReport(qps=5.0)
    # The deprecated integer rps (field 3, varint) stands in for a missing rps_fractional.
    assert decode_report(bytes([3 << 3, 42])) == LoadReport(qps=42.0)
    # Unknown fields (a newer proto) are skipped.
    assert decode_report(bytes([99 << 3 & 0x7F | 0x80, 99 >> 4, 1])) == LoadReport()


def test_the_stream_request_is_orca_s() -> None:
    request = messages()[1](request_cost_names=["a"])
    request.report_interval.seconds = 5
    # report_interval (1) a google.protobuf.Duration {seconds: 5}; request_cost_names (2).
    assert request.SerializeToString() == bytes.fromhex("0a020805" "120161")  # fmt: skip


def test_utilization_follows_a114() -> None:
    report = LoadReport(cpu_utilization=0.2, mem_utilization=0.6, named_metrics={"q": 0.9})
    assert report_utilization(report) == 0.2
    assert report_utilization(report, ("mem_utilization",)) == 0.6
    assert report_utilization(report, ("mem_utilization", "named_metrics.q")) == 0.9
    assert report_utilization(report, ("named_metrics.missing",)) == 0.2
    with_app = LoadReport(cpu_utilization=0.2, application_utilization=0.5)
    assert report_utilization(with_app, ("named_metrics.q",)) == 0.5


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="choice_count"):
        LeastRequest(choice_count=1)
    with pytest.raises(ValueError, match="error_utilization_penalty"):
        WeightedRoundRobin(error_utilization_penalty=-1)
    with pytest.raises(ValueError, match="unsupported utilization metric"):
        WeightedRoundRobin(metric_names_for_computing_utilization=("rps",))
    with pytest.raises(ValueError, match="blackout_period"):
        WeightedRoundRobin(blackout_period=float("nan"))
    with pytest.raises(ValueError, match="aggression"):
        SlowStart(window=10, aggression=0)
    with pytest.raises(ValueError, match="capacity"):
        LoadReporter(capacity=0)
    reporter = LoadReporter()
    with pytest.raises(ValueError, match="finite"):
        reporter.set_cpu_utilization(float("inf"))
    with pytest.raises(ValueError, match="non-empty"):
        reporter.set_named_metric("", 1.0)


def test_slow_start_ramps_as_a100_says() -> None:
    ramp = SlowStart(window=10, aggression=1.0, min_weight_percent=10)
    assert ramp.scale(0) == pytest.approx(0.1)  # max(t, 1) / window, floored at 10%
    assert ramp.scale(5) == pytest.approx(0.5)
    assert ramp.scale(10) == 1.0
    assert SlowStart(window=10, aggression=2.0).scale(2.5) == pytest.approx(0.5)


# -- the server side -------------------------------------------------------------------------


class LoadedServer(EchoServer):
    """An echo server with a :class:`LoadReporter`; ``delay`` slows its ``Unary`` down."""

    def __init__(self, name: str, reporter: LoadReporter) -> None:
        super().__init__(name, interceptors=[reporter.interceptor])
        self.reporter = reporter
        self.delay = 0.0
        # Beside the echo server's methods (its Unary is the one below).
        handlers = {
            "Cost": grpc.unary_unary_rpc_method_handler(self._cost),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        reporter.add_to_server(self.server)

    async def _unary(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return self._tag(request)

    async def _cost(self, request: bytes, context: Any) -> bytes:
        call_load().set_request_cost("rows", 7.0)
        call_load().set_named_metric("queue", 0.5)
        return self._tag(request)

    async def _fail(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INTERNAL, "no")
        raise AssertionError


async def test_a_server_measures_qps_and_errors_per_window() -> None:
    reporter = LoadReporter(window=0.2, capacity=4)
    async with LoadedServer("s", reporter) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            unary, fail = channel.unary_unary(method("Unary")), channel.unary_unary(method("Fail"))

            async def traffic() -> bool:
                await unary(b"x")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await fail(b"x")
                report = reporter.report()
                return report.qps > 0 and report.eps > 0

            with anyio.fail_after(10):
                while not await traffic():
                    pass
        report = reporter.report()
        # Every other call failed: errors are about half the queries.
        assert 0.3 < report.eps / report.qps < 0.7
        assert report.cpu_utilization > 0 and report.mem_utilization > 0
        assert 0 < report.application_utilization <= 1


async def test_the_out_of_band_stream_reports_at_the_interval_asked() -> None:
    reporter = LoadReporter(min_report_interval=0.05)
    reporter.set_cpu_utilization(0.3)
    async with LoadedServer("s", reporter) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            request = messages()[1]()
            request.report_interval.nanos = 50_000_000
            stream = channel.unary_stream(
                STREAM_METHOD, request_serializer=type(request).SerializeToString
            )(request)
            reports = []
            with anyio.fail_after(10):
                async for data in stream:
                    reports.append(decode_report(data))
                    reporter.set_cpu_utilization(0.6)
                    if len(reports) == 2:
                        stream.cancel()
                        break
    assert [r.cpu_utilization for r in reports if r is not None] == [0.3, 0.6]


# -- the client side -------------------------------------------------------------------------

# Reports every 50 ms, used at once, weights recomputed every 100 ms: a test's pace.
QUICK = WeightedRoundRobin(oob_reporting_period=0.05, blackout_period=0, weight_update_period=0.1)


class ForeignServer(EchoServer):
    """A server we did not write: its ORCA stream sends hand-built bytes, as grpc-go's
    ``orca.Service`` does (one report at once, then one per interval), using nothing of ours."""

    def __init__(self, name: str, report: bytes) -> None:
        super().__init__(name)
        self.report = report
        self.streams = 0
        # Then the server ends the stream (OK).
        self.reports_per_stream = 1 << 30
        handler = grpc.unary_stream_rpc_method_handler(self._reports)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "xds.service.orca.v3.OpenRcaService", {"StreamCoreMetrics": handler}
                ),
            )
        )

    async def _reports(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.streams += 1
        for _ in range(self.reports_per_stream):
            if self.report:
                yield self.report
            await anyio.sleep(0.05)


def where(replies: Sequence[bytes]) -> Counter[str]:
    return Counter(r.split(b":", 1)[0].decode() for r in replies)


async def test_weighted_round_robin_follows_a_foreign_server_s_reports(
    client: EtcdClient, service: str
) -> None:
    # weight = qps / utilization: 100 / 0.25 = 400 against 100 / 1.0 = 100.
    policy = QUICK
    async with (
        ForeignServer("light", go_report(qps=100, cpu=0.25)) as light,
        ForeignServer("heavy", go_report(qps=100, cpu=1.0)) as heavy,
        registered(client, service, [light, heavy]),
    ):
        async with await resolve(client, service, policy=policy) as channel:
            unary = channel.unary_unary(method("Unary"))

            def weights() -> dict[str, float | None]:
                subs = channel.statistics().subchannels
                return {name: subs[s.address].weight for name, s in (("l", light), ("h", heavy))}

            with anyio.fail_after(10):
                while weights() != {"l": 400.0, "h": 100.0}:
                    await unary(b"x")
            replies = [await unary(b"x") for _ in range(500)]
    counts = where(replies)
    # An earliest-deadline-first schedule gives each its share within a pick or two.
    assert abs(counts["light"] - 400) <= 3, counts


async def test_errors_cost_weight_and_fewer_than_two_weights_mean_round_robin(
    client: EtcdClient, service: str
) -> None:
    # The same qps and utilization, but eps/qps = 1: weight = 100 / (0.5 + 1 x 1.0).
    policy = QUICK
    async with (
        ForeignServer("good", go_report(qps=100, cpu=0.5)) as good,
        ForeignServer("errors", go_report(qps=100, cpu=0.5, eps=100)) as errors,
        EchoServer("silent") as silent,
        registered(client, service, [good, errors, silent]),
    ):
        async with await resolve(client, service, policy=policy) as channel:
            unary = channel.unary_unary(method("Unary"))
            subs = lambda: channel.statistics().subchannels  # noqa: E731
            with anyio.fail_after(10):
                while subs()[good.address].weight != 200.0:
                    await unary(b"x")
            stats = subs()
            assert stats[errors.address].weight == pytest.approx(100 / 1.5)
            # A server without reports gets the mean of the others.
            assert stats[silent.address].weight == pytest.approx((200 + 100 / 1.5) / 2)
    async with (
        ForeignServer("only", go_report(qps=100, cpu=0.5)) as only,
        EchoServer("silent") as silent,
        registered(client, f"{service}-rr", [only, silent]),
    ):
        async with await resolve(client, f"{service}-rr", policy=policy) as channel:
            unary = channel.unary_unary(method("Unary"))
            replies = [await unary(b"x") for _ in range(100)]
            assert where(replies) == {"only": 50, "silent": 50}


async def test_a_report_stream_that_ends_is_opened_again(client: EtcdClient, service: str) -> None:
    async with (
        ForeignServer("a", go_report(qps=100, cpu=0.5)) as a,
        ForeignServer("b", go_report(qps=100, cpu=0.5)) as b,
        registered(client, service, [a, b]),
    ):
        a.reports_per_stream = 1
        async with await resolve(client, service, policy=QUICK) as channel:
            await until(lambda: a.streams >= 3)
            # On the same connection all along: one stream at a time, each after a backoff.
            assert b.streams == 1
            assert channel.statistics().subchannels[a.address].reconnects == 0


async def test_weights_wait_out_the_blackout_and_expire_without_reports(
    client: EtcdClient, service: str
) -> None:
    policy = WeightedRoundRobin(
        oob_reporting_period=0.05,
        blackout_period=1.5,
        weight_expiration_period=1.0,
        weight_update_period=0.1,
    )
    async with (
        ForeignServer("light", go_report(qps=100, cpu=0.25)) as light,
        ForeignServer("heavy", go_report(qps=100, cpu=1.0)) as heavy,
        registered(client, service, [light, heavy]),
    ):
        # No report can be older than this.
        start = time.monotonic()
        async with await resolve(client, service, policy=policy) as channel:
            unary = channel.unary_unary(method("Unary"))

            async def weight_becomes(wanted: float) -> float:
                with anyio.fail_after(10):
                    while channel.statistics().subchannels[light.address].weight != wanted:
                        await unary(b"x")
                return time.monotonic()

            # Reports come every 50 ms; the weights wait out the blackout.
            assert await weight_becomes(400.0) - start >= 1.5
            # The servers stop reporting: once the weights expire, round robin again.
            light.report = heavy.report = b""
            stopped = time.monotonic()
            # (The last report may have left the server a moment before the switch.)
            assert await weight_becomes(1.0) - stopped >= 0.5


async def test_a_server_turning_slow_loses_its_share_and_gets_it_back(
    client: EtcdClient, service: str
) -> None:
    servers = [
        LoadedServer(f"s{i}", LoadReporter(capacity=8, window=0.2, min_report_interval=0.1))
        for i in range(3)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
            server.delay = 0.002
        await stack.enter_async_context(registered(client, service, servers))
        policy = WeightedRoundRobin(
            oob_reporting_period=0.1, blackout_period=0.5, weight_update_period=0.1
        )
        channel = await stack.enter_async_context(await resolve(client, service, policy=policy))
        unary = channel.unary_unary(method("Unary"))
        recent: deque[str] = deque(maxlen=300)

        async def worker() -> None:
            while True:
                recent.append((await unary(b"x")).split(b":")[0].decode())

        def share() -> float:
            return recent.count("s0") / len(recent) if len(recent) == recent.maxlen else -1

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
            await until(lambda: 0.25 < share() < 0.42, timeout=20)
            servers[0].delay = 0.02  # ten times slower
            recent.clear()
            await until(lambda: 0 <= share() < 0.15, timeout=20)
            servers[0].delay = 0.002
            recent.clear()
            await until(lambda: share() > 0.25, timeout=20)
            tg.cancel_scope.cancel()


async def test_a_new_server_starts_slowly(client: EtcdClient, service: str) -> None:
    policy = WeightedRoundRobin(
        oob_reporting_period=0.05,
        blackout_period=0,
        weight_update_period=0.1,
        slow_start=SlowStart(window=2, aggression=0.5),
    )
    async with contextlib.AsyncExitStack() as stack:
        a, b, new = [
            await stack.enter_async_context(ForeignServer(name, go_report(qps=100, cpu=0.5)))
            for name in ("a", "b", "new")
        ]
        await stack.enter_async_context(registered(client, service, [a, b]))
        channel = await stack.enter_async_context(await resolve(client, service, policy=policy))
        unary = channel.unary_unary(method("Unary"))

        def weights() -> set[float | None]:
            return {s.weight for s in channel.statistics().subchannels.values()}

        # a and b past their own slow start (A100: endpoints all new ramp up together).
        with anyio.fail_after(10):
            while weights() != {200.0}:
                await unary(b"x")
        await stack.enter_async_context(registered(client, service, [new]))
        with anyio.fail_after(10):
            while len(weights()) < 2:
                await unary(b"x")
        # In its first second: (max(t, 1) / window) ** (1 / aggression), a quarter.
        first = [await unary(b"x") for _ in range(100)]
        assert where(first)["new"] < 100 * 0.2, where(first)
        # Then it ramps up to an equal share.
        with anyio.fail_after(10):
            while weights() != {200.0}:
                await unary(b"x")
        last = [await unary(b"x") for _ in range(300)]
        assert abs(where(last)["new"] - 100) <= 3


@pytest.mark.parametrize("choice_count", [2, 10])
async def test_least_request_never_picks_the_busiest_of_three(
    client: EtcdClient, service: str, choice_count: int
) -> None:
    async with (
        EchoServer("busy") as busy,
        EchoServer("idle1") as idle1,
        EchoServer("idle2") as idle2,
        registered(client, service, [busy]),
    ):
        policy = LeastRequest(choice_count=choice_count)
        async with await resolve(client, service, policy=policy) as channel:
            held = [channel.unary_unary(method("Hold"))(b"h") for _ in range(3)]
            await until(lambda: busy.holding == 3)
            async with registered(client, service, [idle1, idle2]):
                await until(lambda: channel.statistics().by_state().get("READY") == 3)
                unary = channel.unary_unary(method("Unary"))
                replies = [await unary(b"x") for _ in range(200)]
                stats = channel.statistics()
            busy.release.set()
            for call in held:
                await call
    # Distinct draws: any two of three include an idle server (A48's draws with replacement
    # would compare the busy one with itself one pick in nine).
    assert where(replies)["busy"] == 0, where(replies)
    assert stats.subchannels[busy.address].in_flight == 3
    assert stats.subchannels[idle1.address].weight is None


async def test_least_request_spreads_concurrent_calls(client: EtcdClient, service: str) -> None:
    async with (
        EchoServer("a") as a,
        EchoServer("b") as b,
        registered(client, service, [a, b]),
    ):
        async with await resolve(client, service, policy="least_request") as channel:
            await until(lambda: channel.statistics().by_state().get("READY") == 2)
            held = [channel.unary_unary(method("Hold"))(b"h") for _ in range(20)]
            await until(lambda: a.holding + b.holding == 20)
            # Two choices keep the two within a few calls of each other.
            assert abs(a.holding - b.holding) <= 8
            a.release.set()
            b.release.set()
            for call in held:
                await call

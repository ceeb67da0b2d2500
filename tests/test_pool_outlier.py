"""resolve(outlier_detection=...): servers failing their calls are ejected, then come back."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import (
    BalancedChannel,
    EtcdClient,
    OutlierDetection,
    Picker,
    SubchannelView,
    resolve,
)
from aiodiscovery._balancer.subchannel import Subchannel, Tally
from aiodiscovery._logsafe import Labelled
from aiodiscovery._resilience.outlier import OutlierDetector
from aiodiscovery.testing import free_port

from .faulty_servers import NOT_SERVING, FaultyServer, faulty_servers, registered
from .helpers import until
from .test_pool import ready, where

pytestmark = pytest.mark.anyio

# Fast enough for tests: a sweep every 0.1 s, half a second of ejection.
FAST = OutlierDetection(interval=0.1, base_ejection_time=0.5, max_ejection_time=2.0)


async def outcome(channel: grpc.aio.Channel, payload: bytes = b"x") -> bytes | grpc.StatusCode:
    """The reply, or the status code of the failure."""
    try:
        reply: bytes = await channel.unary_unary("/test.Echo/Unary")(payload, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return reply


def ejected(channel: BalancedChannel) -> set[str]:
    return {a for a, s in channel.statistics().subchannels.items() if s.ejected}


@contextlib.asynccontextmanager
async def calling(channel: grpc.aio.Channel, workers: int = 4) -> AsyncIterator[list[object]]:
    """Workers calling back to back while the block runs; yields their outcomes."""
    outcomes: list[object] = []
    stop = anyio.Event()

    async def worker() -> None:
        while not stop.is_set():
            outcomes.append(await outcome(channel))

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
        try:
            yield outcomes
        finally:
            stop.set()


async def test_a_server_failing_every_call_is_ejected_and_comes_back(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with faulty_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service, outlier_detection=FAST) as channel:
            await ready(channel, 3)
            bad = servers[1]
            bad.fail_with = grpc.StatusCode.UNAVAILABLE
            with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
                results = [await outcome(channel) for _ in range(15)]
            # Round robin gave it every third call: its fifth failure in a row ejected it.
            assert results.count(grpc.StatusCode.UNAVAILABLE) == 5
            assert ejected(channel) == {bad.address}
            stats = channel.statistics()
            assert (stats.ejected, stats.ejections) == (1, 1)
            assert stats.subchannels[bad.address].ejections == 1
            assert stats.subchannels[bad.address].state == "READY"
            assert f"endpoint {bad.address} ejected for 0.5 s (5 failures)" in caplog.text
            calls = bad.calls
            assert where([await outcome(channel) for _ in range(20)]) == {"s0": 10, "s2": 10}
            assert bad.calls == calls
            # It comes back by itself once its time is up, whether or not it is fixed.
            bad.fail_with = None
            await until(lambda: not ejected(channel), timeout=5)
            assert channel.statistics().ejected == 0
            assert set(where([await outcome(channel) for _ in range(30)])) == {"s0", "s1", "s2"}


async def test_ejections_are_capped_and_never_take_the_last_endpoint(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(3) as servers, registered(client, service, servers):
        # Two of three failing, at most 10 % ejected: gRPC still lets one through, not two.
        async with await resolve(client, service, outlier_detection=FAST) as channel:
            await ready(channel, 3)
            for server in servers[:2]:
                server.fail_with = grpc.StatusCode.INTERNAL
            results = [await outcome(channel) for _ in range(30)]
            assert len(ejected(channel)) == 1
            assert results.count(grpc.StatusCode.INTERNAL) >= 10
        for server in servers:
            server.fail_with = grpc.StatusCode.INTERNAL
        # All failing, every one allowed: the last one in service stays, failing as it does.
        everything = dataclasses.replace(FAST, max_ejection_percent=100)
        async with await resolve(client, service, outlier_detection=everything) as channel:
            await ready(channel, 3)
            results = [await outcome(channel) for _ in range(40)]
            assert len(ejected(channel)) == 2
            assert results[-5:] == [grpc.StatusCode.INTERNAL] * 5


async def test_the_ejection_time_grows_with_each_ejection_and_decays(
    client: EtcdClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Interval sweeps run by hand, at a time far enough ahead that any ejection is over: what
    # happens at each interval does not depend on how fast the machine is.
    config = dataclasses.replace(FAST, interval=3600, base_ejection_time=0.3, max_ejection_time=0.5)
    async with faulty_servers(3) as servers, registered(client, service, servers):
        async with await resolve(client, service, outlier_detection=config) as channel:
            await ready(channel, 3)
            detector = channel._pool._detector
            assert detector is not None

            def interval_ends() -> None:
                assert detector is not None
                detector.sweep(time.monotonic() + 60)

            bad = servers[0]
            with caplog.at_level(logging.WARNING, logger="aiodiscovery"):
                for _ in range(2):
                    # Ejected (its fifth failure in a row), back at the next interval, ejected
                    # again before another: 0.3 s, then 0.6 s capped at 0.5 s.
                    bad.fail_with = grpc.StatusCode.UNAVAILABLE
                    for _ in range(15):
                        await outcome(channel)
                    assert ejected(channel) == {bad.address}
                    interval_ends()
                    assert ejected(channel) == set()
                # Two intervals in service bring the multiplier from 2 back to 0.
                bad.fail_with = None
                interval_ends()
                interval_ends()
                bad.fail_with = grpc.StatusCode.UNAVAILABLE
                for _ in range(15):
                    await outcome(channel)
                assert ejected(channel) == {bad.address}
    durations = [
        r.getMessage().split(" ejected for ")[1].split(" s ")[0]
        for r in caplog.records
        if " ejected for " in r.getMessage()
    ]
    assert durations == ["0.3", "0.5", "0.3"]
    assert channel.statistics().ejections == 3


async def test_failure_percentage_ejects_on_the_interval(client: EtcdClient, service: str) -> None:
    config = dataclasses.replace(
        FAST,
        enforcing_consecutive_failures=0,
        enforcing_success_rate=0,
        enforcing_failure_percentage=100,
        failure_percentage_threshold=50,
        failure_percentage_request_volume=10,
        max_ejection_percent=50,
    )
    async with faulty_servers(5) as servers, registered(client, service, servers):
        async with await resolve(client, service, outlier_detection=config) as channel:
            await ready(channel, 5)
            # Every call fails: way above 50 %, but that is only looked at when an interval ends.
            servers[3].fail_with = grpc.StatusCode.DEADLINE_EXCEEDED
            async with calling(channel) as outcomes:
                await until(lambda: bool(ejected(channel)))
            assert ejected(channel) == {servers[3].address}
            assert outcomes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 10


async def test_success_rate_ejects_the_outlier_among_enough_hosts(
    client: EtcdClient, service: str
) -> None:
    config = dataclasses.replace(
        FAST,
        enforcing_consecutive_failures=0,
        success_rate_request_volume=10,
        base_ejection_time=30,
    )
    async with faulty_servers(5) as servers, registered(client, service, servers):
        async with await resolve(client, service, outlier_detection=config) as channel:
            await ready(channel, 5)
            servers[2].fail_with = grpc.StatusCode.UNKNOWN
            async with calling(channel):
                await until(lambda: bool(ejected(channel)))
            assert ejected(channel) == {servers[2].address}
        # Four hosts are fewer than success_rate_minimum_hosts (5): nobody is compared.
        async with registered(client, f"{service}-four", servers[:4]):
            async with await resolve(
                client, f"{service}-four", outlier_detection=config
            ) as channel:
                await ready(channel, 4)
                async with calling(channel) as outcomes:
                    await until(lambda: len(outcomes) > 300)
                assert ejected(channel) == set()


async def test_which_codes_count_as_failures_is_configurable(
    client: EtcdClient, service: str
) -> None:
    async with faulty_servers(3) as servers, registered(client, service, servers):
        servers[0].fail_with = grpc.StatusCode.INVALID_ARGUMENT
        default = await resolve(client, service, outlier_detection=FAST)
        strict = await resolve(
            client,
            service,
            outlier_detection=dataclasses.replace(
                FAST, failure_codes={grpc.StatusCode.INVALID_ARGUMENT}
            ),
        )
        async with default, strict:
            for channel in (default, strict):
                await ready(channel, 3)
                for _ in range(15):
                    await outcome(channel)
            # A request the server refuses says nothing about the server, by default.
            assert ejected(default) == set()
            assert ejected(strict) == {servers[0].address}


def test_outlier_detection_is_checked_and_frozen() -> None:
    config = OutlierDetection()
    assert (config.interval, config.base_ejection_time, config.max_ejection_time) == (10, 30, 300)
    assert (config.max_ejection_percent, config.consecutive_failures) == (10, 5)
    assert (config.success_rate_minimum_hosts, config.success_rate_request_volume) == (5, 100)
    assert config.enforcing_failure_percentage == 0
    assert grpc.StatusCode.UNAVAILABLE in config.failure_codes
    assert grpc.StatusCode.INVALID_ARGUMENT not in config.failure_codes
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 1  # type: ignore[misc]
    for bad, message in [
        ({"interval": 0}, "interval must be a number of seconds > 0"),
        ({"base_ejection_time": float("nan")}, "base_ejection_time"),
        ({"max_ejection_percent": 101}, "max_ejection_percent must be an integer from 0 to 100"),
        ({"consecutive_failures": 0}, "consecutive_failures must be an integer >= 1"),
        ({"success_rate_stdev_factor": -1}, "success_rate_stdev_factor"),
        ({"failure_codes": {grpc.StatusCode.OK}}, "failure_codes"),
        ({"failure_codes": {"UNAVAILABLE"}}, "failure_codes"),
    ]:
        with pytest.raises(ValueError, match=message):
            OutlierDetection(**bad)  # type: ignore[arg-type]


async def test_no_usable_endpoint_says_why(client: EtcdClient, service: str) -> None:
    async with faulty_servers(3) as servers, registered(client, service, servers):
        async with await resolve(
            client, service, health_check="", outlier_detection=FAST
        ) as channel:
            await ready(channel, 3)
            await until(lambda: channel.statistics().by_health() == {"SERVING": 3})
            await servers[0].set_health(NOT_SERVING)
            await until(lambda: channel.statistics().by_health().get("NOT_SERVING") == 1)
            servers[1].fail_with = grpc.StatusCode.UNAVAILABLE
            while not ejected(channel):
                await outcome(channel)
            await servers[2].set_health(NOT_SERVING)
            await until(lambda: channel.statistics().by_health().get("NOT_SERVING") == 2)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Echo/Unary")(b"x")
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == (
                f"no usable endpoint of {service!r}: 2 NOT_SERVING (health check), "
                "1 ejected (outlier detection)"
            )


async def test_a_lone_server_is_never_ejected(client: EtcdClient, service: str) -> None:
    async with faulty_servers(1) as servers, registered(client, service, servers):
        server: FaultyServer = servers[0]
        server.fail_with = grpc.StatusCode.UNAVAILABLE
        async with await resolve(client, service, outlier_detection=FAST) as channel:
            await ready(channel, 1)
            results = [await outcome(channel) for _ in range(12)]
            assert results == [grpc.StatusCode.UNAVAILABLE] * 12
            assert ejected(channel) == set()


class _Busy(Picker[SubchannelView]):
    """Sends every call to the first ``busy`` usable subchannels in turn: only they get traffic."""

    busy = 1

    def __init__(self) -> None:
        self._subs: Sequence[SubchannelView] = ()
        self._next = 0

    def update(self, subchannels: Sequence[SubchannelView]) -> None:
        self._subs = sorted(subchannels, key=lambda s: s.address)[: self.busy]

    def pick(self) -> SubchannelView:
        self._next = (self._next + 1) % len(self._subs)
        return self._subs[self._next]


def _busy(count: int) -> Callable[[], Picker[SubchannelView]]:
    return type(f"Busy{count}", (_Busy,), {"busy": count})


# Sweeps run by hand (swept_by_hand): the detector's own interval is an hour.
BY_HAND = dataclasses.replace(FAST, interval=3600, enforcing_consecutive_failures=0)


@contextlib.asynccontextmanager
async def swept_by_hand(
    client: EtcdClient, service: str, config: OutlierDetection, busy: int
) -> AsyncIterator[tuple[BalancedChannel, Callable[[int], Awaitable[set[str]]]]]:
    """A channel over five registered hosts whose calls go to the first ``busy`` of them, and
    ``sweep(calls)``: make that many calls, run one interval's sweep now, return the ejected
    addresses."""
    async with await resolve(
        client, service, policy=_busy(busy), outlier_detection=config
    ) as channel:
        await ready(channel, 5)

        async def sweep(calls: int) -> set[str]:
            for _ in range(calls):
                await outcome(channel)
            detector = channel._pool._detector
            assert detector is not None
            detector.sweep(time.monotonic())
            return ejected(channel)

        yield channel, sweep


async def test_failure_percentage_counts_only_hosts_with_enough_calls(
    client: EtcdClient, service: str
) -> None:
    # A50: the check runs only if at least failure_percentage_minimum_hosts hosts had
    # failure_percentage_request_volume calls in the interval; registered hosts do not count.
    config = dataclasses.replace(
        BY_HAND,
        enforcing_success_rate=0,
        enforcing_failure_percentage=100,
        failure_percentage_request_volume=10,
    )
    async with faulty_servers(5) as servers, registered(client, service, servers):
        for server in servers:
            server.fail_with = grpc.StatusCode.UNAVAILABLE
        first = min(s.address for s in servers)
        for minimum, expected in ((5, set()), (1, {first})):
            limited = dataclasses.replace(config, failure_percentage_minimum_hosts=minimum)
            async with swept_by_hand(client, service, limited, busy=1) as (_, sweep):
                # 5 hosts, 1 of them with 20 calls, all failed.
                assert await sweep(20) == expected


async def test_success_rate_counts_only_hosts_with_enough_calls(
    client: EtcdClient, service: str
) -> None:
    config = dataclasses.replace(
        BY_HAND,
        success_rate_request_volume=10,
        success_rate_minimum_hosts=4,
        success_rate_stdev_factor=1.0,
    )
    async with faulty_servers(5) as servers, registered(client, service, servers):
        by_address = sorted(servers, key=lambda s: s.address)
        by_address[0].fail_with = grpc.StatusCode.UNAVAILABLE
        # Three busy hosts of five are fewer than 4; four are enough.
        for busy, expected in ((3, set()), (4, {by_address[0].address})):
            async with swept_by_hand(client, service, config, busy) as (_, sweep):
                assert await sweep(12 * busy) == expected


async def test_success_rate_stdev_factor_sets_how_far_below_the_mean(
    client: EtcdClient, service: str
) -> None:
    # Five hosts with traffic, one failing half its calls: rates 1, 1, 1, 1, 0.5; mean 0.9,
    # standard deviation 0.2. Ejected below 0.9 - 1.9 x 0.2 = 0.52; not below 0.9 - 3 x 0.2.
    async with faulty_servers(5) as servers, registered(client, service, servers):
        flaky = min(servers, key=lambda s: s.address)
        for factor, expected in ((3.0, set()), (1.9, {flaky.address})):
            config = dataclasses.replace(
                BY_HAND, success_rate_request_volume=10, success_rate_stdev_factor=factor
            )
            async with swept_by_hand(client, service, config, busy=5) as (channel, sweep):
                # Rounds of one call per host; the flaky one fails every other round.
                for i in range(20):
                    flaky.fail_with = grpc.StatusCode.UNAVAILABLE if i % 2 else None
                    for _ in range(5):
                        await outcome(channel)
                assert channel.statistics().subchannels[flaky.address].failures == 10
                assert await sweep(0) == expected


async def test_partial_enforcing_ejects_that_share_of_detected_outliers() -> None:
    # enforcing_* is a chance in percent: 400 detections at 50 % eject about 200 times (the
    # bounds are seven standard deviations away: a false failure is not a practical concern).
    trials = 400
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") for _ in range(3)]
    try:
        subs = [Subchannel(f"s{i}", None, ch) for i, ch in enumerate(channels)]
        log = Labelled(logging.getLogger("aiodiscovery.pool"), "test")
        unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
        ok = grpc.StatusCode.OK.value[0]

        def run(config: OutlierDetection, detect: Callable[[OutlierDetector, float], None]) -> int:
            detector = OutlierDetector(config, log, lambda: subs, lambda: None)
            for sub in subs:
                sub.tally = Tally()
            ejections = 0
            now = time.monotonic()
            for _ in range(trials):
                detect(detector, now)
                tally = subs[0].tally
                assert tally is not None
                if tally.ejected_at is not None:
                    ejections += 1
                    # Its time is up: back at the next sweep.
                    now += config.longest_ejection + 1
                    detector.sweep(now)
                    assert tally.ejected_at is None
            return ejections

        def streak(detector: OutlierDetector, now: float) -> None:
            for _ in range(5):
                detector.record(subs[0], unavailable)

        def percentage(detector: OutlierDetector, now: float) -> None:
            for _ in range(10):
                detector.record(subs[0], unavailable)
                for other in subs[1:]:
                    detector.record(other, ok)
            detector.sweep(now)

        base = dataclasses.replace(
            FAST,
            enforcing_success_rate=0,
            max_ejection_percent=50,
            enforcing_consecutive_failures=0,
        )
        for enforcing, expected in ((0, (0, 0)), (100, (trials, trials)), (50, (130, 270))):
            by_streak = run(
                dataclasses.replace(base, enforcing_consecutive_failures=enforcing), streak
            )
            by_percentage = run(
                dataclasses.replace(
                    base,
                    enforcing_failure_percentage=enforcing,
                    failure_percentage_minimum_hosts=3,
                    failure_percentage_request_volume=10,
                ),
                percentage,
            )
            low, high = expected
            assert low <= by_streak <= high and low <= by_percentage <= high, (
                enforcing,
                by_streak,
                by_percentage,
            )
    finally:
        for channel in channels:
            await channel.close()

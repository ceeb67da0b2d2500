"""Load reports from a ``grpc.aio`` server: ORCA (gRFC A51), per call and out of band.

::

    load = LoadReporter(capacity=64)
    server = grpc.aio.server(interceptors=[load.interceptor])
    load.add_to_server(server)

The interceptor puts a report in every call's trailer (``endpoint-load-metrics-bin``); the
``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`` method sends one at once and then every
interval the client asks for (never more often than ``min_report_interval``). Both carry what
grpc-go's and grpc-java's servers carry, in the same bytes, so clients of any language can balance
on them (:class:`~aiodiscovery.WeightedRoundRobin` here, ``weighted_round_robin`` there).

Values are measured unless set: queries and errors per second from the calls the interceptor
sees, over the last ``window`` seconds; ``cpu_utilization`` as the process's CPU time over the
CPUs it may use; ``mem_utilization`` as its resident memory over the machine's; and, given a
``capacity``, ``application_utilization`` as the mean share of that capacity in use (calls in
flight, counted up to the capacity: calls beyond it wait, which shows in the qps, not as more
utilization; so a saturated server's weight is its throughput, with or without a queue). A value
set with a ``set_*`` method wins over the measurement (``None`` gives it back); named metrics and
utilizations are always the application's. A handler adds its own call's costs and metrics with
:func:`call_load`.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import grpc
import grpc.aio

from .._orcaproto import STREAM_METHOD, TRAILER, LoadReport, encode_report, messages

__all__ = ["CallLoad", "LoadReporter", "call_load"]

DEFAULT_MIN_REPORT_INTERVAL = 30.0

_CALL: contextvars.ContextVar[CallLoad] = contextvars.ContextVar("aiodiscovery_call_load")
_OK = grpc.StatusCode.OK


def _value(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


class CallLoad:
    """What a handler reports about its own call, on top of the server's report.

    Get it with :func:`call_load` inside a handler of a server using
    :attr:`LoadReporter.interceptor`. Values set here go in this call's trailer only.
    """

    __slots__ = ("_maps", "_scalars")

    def __init__(self) -> None:
        self._scalars: dict[str, float] = {}
        self._maps: dict[str, dict[str, float]] = {}

    def set_request_cost(self, name: str, value: float) -> None:
        """This call's cost ``name`` (e.g. rows read): ORCA's ``request_cost``."""
        self._maps.setdefault("request_cost", {})[name] = _value(name, value)

    def set_named_metric(self, name: str, value: float) -> None:
        """A named metric for this call's report (``named_metrics``)."""
        self._maps.setdefault("named_metrics", {})[name] = _value(name, value)

    def set_utilization(self, name: str, value: float) -> None:
        """A named utilization for this call's report (``utilization``)."""
        self._maps.setdefault("utilization", {})[name] = _value(name, value)

    def set_cpu_utilization(self, value: float) -> None:
        """The CPU utilization this call's report gives."""
        self._scalars["cpu_utilization"] = _value("cpu_utilization", value)

    def set_memory_utilization(self, value: float) -> None:
        """The memory utilization this call's report gives."""
        self._scalars["mem_utilization"] = _value("mem_utilization", value)

    def set_application_utilization(self, value: float) -> None:
        """The application utilization this call's report gives."""
        self._scalars["application_utilization"] = _value("application_utilization", value)

    def over(self, report: LoadReport) -> LoadReport:
        """``report`` with this call's values laid over it."""
        maps = {name: {**getattr(report, name), **values} for name, values in self._maps.items()}
        fields: dict[str, Any] = {**self._scalars, **maps}
        return _replace(report, fields)

    def __bool__(self) -> bool:
        return bool(self._scalars or self._maps)


def _replace(report: LoadReport, fields: Mapping[str, Any]) -> LoadReport:
    values = {name: getattr(report, name) for name in LoadReport.__dataclass_fields__}
    values.update(fields)
    return LoadReport(**values)


def call_load() -> CallLoad:
    """The :class:`CallLoad` of the call being handled (raises ``LookupError`` outside one, or
    on a server without :attr:`LoadReporter.interceptor`)."""
    return _CALL.get()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_fraction() -> float | None:
    """Resident memory of this process over the machine's physical memory (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1])
        total = os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, IndexError):
        return None
    return resident / total if total > 0 else None


class LoadReporter:
    """A ``grpc.aio`` server's load, reported per call and on the ORCA stream (see the module).

    ``capacity`` is how many calls in flight the server counts as fully busy (for
    ``application_utilization``; calls beyond it count as waiting, not as more use); ``window``
    is the measuring period in seconds;
    ``min_report_interval`` the shortest interval granted to an out-of-band stream (grpc-go's
    default, 30 s, unless you choose less).
    """

    def __init__(
        self,
        *,
        capacity: int | None = None,
        window: float = 1.0,
        min_report_interval: float = DEFAULT_MIN_REPORT_INTERVAL,
    ) -> None:
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
        ):
            raise ValueError(f"capacity must be a whole number >= 1, not {capacity!r}")
        if _value("window", window) <= 0:
            raise ValueError("window must be > 0 seconds")
        if _value("min_report_interval", min_report_interval) <= 0:
            raise ValueError("min_report_interval must be > 0 seconds")
        self.capacity = capacity
        # Calls beyond the capacity wait for it: they add to latency, not to utilization.
        self._slots = capacity or 1
        self.window = float(window)
        self.min_report_interval = float(min_report_interval)
        self._set: dict[str, float] = {}
        self._maps: dict[str, dict[str, float]] = {"utilization": {}, "named_metrics": {}}
        self._cpus = _usable_cpus()
        # The window being measured: calls and errors ended, in-flight x seconds, CPU seconds.
        now = time.monotonic()
        self._since = now
        self._cpu_since = time.process_time()
        self._calls = 0
        self._errors = 0
        self._in_flight = 0
        self._busy = 0.0
        self._busy_at = now
        # The last whole window's measurements, and the bytes of the report they make.
        self._measured: dict[str, float] = {}
        self._encoded: bytes | None = None
        #: The server interceptor that puts the report in each call's trailer: pass it to
        #: ``grpc.aio.server(interceptors=[...])``.
        self.interceptor: grpc.aio.ServerInterceptor = _Interceptor(self)

    # -- the application's values -----------------------------------------------------------

    def _put(self, name: str, value: float | None) -> None:
        if value is None:
            self._set.pop(name, None)
        else:
            self._set[name] = _value(name, value)
        self._encoded = None

    def set_cpu_utilization(self, value: float | None) -> None:
        """Report this CPU utilization (a fraction) instead of the measured one; None: measure."""
        self._put("cpu_utilization", value)

    def set_memory_utilization(self, value: float | None) -> None:
        """Report this memory utilization instead of the measured one; None: measure."""
        self._put("mem_utilization", value)

    def set_application_utilization(self, value: float | None) -> None:
        """Report this application utilization (what weighted round robin divides by first);
        None: the measured one (with ``capacity``) or none."""
        self._put("application_utilization", value)

    def set_qps(self, value: float | None) -> None:
        """Report these queries per second instead of the measured rate; None: measure."""
        self._put("qps", value)

    def set_eps(self, value: float | None) -> None:
        """Report these errors per second instead of the measured rate; None: measure."""
        self._put("eps", value)

    def set_utilization(self, name: str, value: float | None) -> None:
        """Set (or, with None, remove) the named utilization ``name``."""
        self._put_named("utilization", name, value)

    def set_named_metric(self, name: str, value: float | None) -> None:
        """Set (or, with None, remove) the named metric ``name``."""
        self._put_named("named_metrics", name, value)

    def _put_named(self, kind: str, name: str, value: float | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a metric name must be a non-empty string, not {name!r}")
        if value is None:
            self._maps[kind].pop(name, None)
        else:
            self._maps[kind][name] = _value(name, value)
        self._encoded = None

    # -- measuring ----------------------------------------------------------------------------

    def _roll(self, now: float) -> None:
        """Close the measuring window if it is over: its rates become the reported ones."""
        elapsed = now - self._since
        if elapsed < self.window:
            return
        self._busy += min(self._in_flight, self._slots) * (now - self._busy_at)
        cpu = time.process_time()
        measured = {
            "qps": self._calls / elapsed,
            "eps": self._errors / elapsed,
            "cpu_utilization": (cpu - self._cpu_since) / elapsed / self._cpus,
        }
        memory = _memory_fraction()
        if memory is not None:
            measured["mem_utilization"] = memory
        if self.capacity is not None:
            measured["application_utilization"] = self._busy / elapsed / self.capacity
        self._measured = measured
        self._since = self._busy_at = now
        self._cpu_since = cpu
        self._calls = self._errors = 0
        self._busy = 0.0
        self._encoded = None

    def _started(self) -> None:
        now = time.monotonic()
        self._busy += min(self._in_flight, self._slots) * (now - self._busy_at)
        self._busy_at = now
        self._in_flight += 1

    def _ended(self, failed: bool) -> bytes:
        """Count a finished call; the bytes of the server's report as of now."""
        now = time.monotonic()
        self._busy += min(self._in_flight, self._slots) * (now - self._busy_at)
        self._busy_at = now
        self._in_flight -= 1
        self._calls += 1
        if failed:
            self._errors += 1
        self._roll(now)
        return self._current()

    def _current(self) -> bytes:
        """The bytes of the server's report (made again only when something changed)."""
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = encode_report(self.report())
        return encoded

    def report(self) -> LoadReport:
        """The server's report as of now: set values over the last window's measurements."""
        self._roll(time.monotonic())
        values = {**self._measured, **self._set}
        return LoadReport(
            cpu_utilization=values.get("cpu_utilization", 0.0),
            mem_utilization=values.get("mem_utilization", 0.0),
            application_utilization=values.get("application_utilization", 0.0),
            qps=values.get("qps", 0.0),
            eps=values.get("eps", 0.0),
            utilization=dict(self._maps["utilization"]),
            named_metrics=dict(self._maps["named_metrics"]),
        )

    # -- serving ------------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve the ORCA out-of-band stream (``OpenRcaService/StreamCoreMetrics``) on
        ``server``."""
        request = messages()[1]
        service, method = STREAM_METHOD.strip("/").split("/")
        handler = grpc.unary_stream_rpc_method_handler(
            self._stream, request_deserializer=request.FromString, response_serializer=bytes
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )

    async def _stream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        asked = request.report_interval.seconds + request.report_interval.nanos / 1e9
        # grpc-go's rule: an interval under the minimum (or none) gets the minimum.
        interval = max(asked, self.min_report_interval)
        while True:
            yield encode_report(self.report())
            await anyio.sleep(interval)


Behavior = Callable[..., Any]


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts each call and puts the report in its trailer."""

    def __init__(self, reporter: LoadReporter) -> None:
        self._reporter = reporter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method == STREAM_METHOD:
            return handler
        replace = getattr(handler, "_replace", None)
        if replace is None:
            return handler
        wrapped = {}
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind, None)
            if behavior is not None:
                wrapped[kind] = self._wrap(behavior)
        return replace(**wrapped)

    def _wrap(self, behavior: Behavior) -> Behavior:
        reporter = self._reporter
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _begin(context, reporter)
                failed = True
                try:
                    async for response in behavior(request, context):
                        yield response
                    failed = False
                finally:
                    _trail(context, reporter, failed)

            return stream
        if inspect.iscoroutinefunction(behavior):

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _begin(context, reporter)
                failed = True
                try:
                    response = await behavior(request, context)
                    failed = False
                    return response
                finally:
                    _trail(context, reporter, failed)

            return unary
        # A synchronous handler runs outside the event loop's task: left as it is, unreported.
        return behavior


def _begin(context: grpc.aio.ServicerContext, reporter: LoadReporter) -> None:
    """Count the call in flight and give it the server's report now.

    ``context.abort()`` sends the status at once, before the handler returns: the trailer set
    here is what such a call reports. Any other call's report is refreshed by :func:`_trail`.
    """
    _CALL.set(CallLoad())
    reporter._started()
    context.set_trailing_metadata(((TRAILER, reporter._current()),))


def _trail(context: grpc.aio.ServicerContext, reporter: LoadReporter, failed: bool) -> None:
    """Count the call and put its report, as of its end, beside what the handler set."""
    code = context.code()
    failed = failed or (code is not None and code is not _OK and code != 0)
    data = reporter._ended(failed)
    call = _CALL.get(None)
    if call:
        data = encode_report(call.over(reporter.report()))
    kept = [item for item in context.trailing_metadata() or () if item[0] != TRAILER]
    context.set_trailing_metadata((*kept, (TRAILER, data)))

"""A server's out-of-band load reports: the ORCA stream on each READY connection (gRFC A51).

grpcio's C core keeps the per-call report trailer (``endpoint-load-metrics-bin``) to itself: it
never reaches a Python client's trailing metadata, whichever server sent it. The reports a Python
client can read come on ``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics``, which grpc-go's
``orca.Service``, grpc-java's ``OrcaServiceImpl`` and :class:`~aiodiscovery.LoadReporter` serve.
A subchannel opens one stream per READY connection (as the health watch does) and hands every
report to the policy's :class:`~aiodiscovery._balancer.policies.LoadListener`.
"""

from __future__ import annotations

import anyio
import grpc
import grpc.aio

from .._backoff import Backoff
from .._logsafe import Labelled, safe
from .._orcaproto import STREAM_METHOD, decode_report, messages
from .policies import LoadListener
from .subchannel import Subchannel

__all__ = ["LoadStream"]


class LoadStream:
    """Follows the load reports of each READY subchannel's server for one policy."""

    def __init__(self, log: Labelled, listener: LoadListener) -> None:
        self.log = log
        self.listener = listener
        request_type = messages()[1]
        self._request = request_type()
        seconds, nanos = divmod(round(listener.report_interval * 1e9), 1_000_000_000)
        self._request.report_interval.seconds = seconds
        self._request.report_interval.nanos = nanos
        self._serialize = request_type.SerializeToString
        # Servers without the ORCA service, warned about once each.
        self.unimplemented: set[str] = set()

    async def watch(self, sub: Subchannel, channel: grpc.aio.Channel) -> None:
        """Follow the reports of ``sub``'s server over ``channel``, until cancelled or
        UNIMPLEMENTED; a broken stream is opened again after a backoff (grpc's own)."""
        backoff = Backoff(initial=1.0, cap=120.0, multiplier=1.6)
        open_stream = channel.unary_stream(STREAM_METHOD, request_serializer=self._serialize)
        while True:
            reported, why = await self._stream(sub, open_stream)
            if why == "UNIMPLEMENTED":
                if sub.address not in self.unimplemented:
                    self.unimplemented.add(sub.address)
                    self.log.warning(
                        "endpoint %s sends no load reports (no ORCA service); "
                        "it is weighted as the mean of the others",
                        safe(sub.address),
                    )
                return
            if reported:
                backoff.reset()
            delay = backoff.next_delay()
            self.log.info(
                "load reports of %s stopped (%s); asking again in %.1f s",
                safe(sub.address),
                why,
                delay,
            )
            await anyio.sleep(delay)

    async def _stream(
        self, sub: Subchannel, open_stream: grpc.aio.UnaryStreamMultiCallable
    ) -> tuple[bool, str]:
        """One stream: whether it brought a report, and how it ended."""
        reported = False
        call = open_stream(self._request)
        try:
            async for data in call:
                report = decode_report(data)
                if report is None:
                    return reported, "a report that does not decode"
                reported = True
                self.listener.report(sub.address, report)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return reported, "UNIMPLEMENTED"
            return reported, f"{exc.code().name}: {safe(exc.details())}"
        finally:
            call.cancel()
        return reported, "the server ended the stream"

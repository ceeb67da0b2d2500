"""BalancedChannel: a ``grpc.aio.Channel`` that spreads calls over a service's live endpoints.

grpcio cannot plug in a custom resolver or balancer, so the pool keeps one ordinary ``grpc.aio``
channel per distinct address (a subchannel), follows the :class:`Watcher`'s endpoint set, and
picks a subchannel for each call. The call itself is grpc.aio's own call object from that
subchannel, so stubs, metadata, deadlines, cancellation and streaming behave as usual.

This module is the user's side: the channel's life cycle and the ``grpc.aio.Channel`` methods.
The pool itself is :class:`~.pool.Pool`; it runs in a task of its own and
never refers back to the :class:`BalancedChannel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._balancer.policies import Picker
from .._balancer.subchannel import CallKind
from .._etcd.client import EtcdClient
from .._metrics import track
from .._naming.watcher import Watcher
from .._resilience.outlier import OutlierDetection
from .._selection.address import AddressFilter
from .._selection.locality import DEFAULT_SPILL_THRESHOLD
from .._selection.protection import MassRemovalProtection
from .._selection.selection import SelectionConfig
from .._taskgroup import TaskHost
from .._xds.local import xds_channel
from .._xds.policy import XdsPolicy
from .multicallable import multi_callable
from .options import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MASS_REMOVAL, PoolOptions
from .pool import Pool
from .stats import PoolStatistics, SubchannelStatistics

__all__ = ["BalancedChannel", "PoolStatistics", "SubchannelStatistics", "resolve"]

_State = grpc.ChannelConnectivity


class BalancedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` over every live endpoint of an etcd-registered service.

    Build it with :func:`resolve`, or enter ``async with BalancedChannel(...)``, which opens it
    the same way (and closes it on the way out). Calls go to a subchannel chosen by the policy
    among READY ones (IDLE, CONNECTING or TRANSIENT_FAILURE ones only when none is READY), and
    only among healthy, non-ejected ones with a health check or outlier detection. With
    no usable endpoint at all a call fails at once with ``UNAVAILABLE``, unless it asks
    ``wait_for_ready=True``: then it waits for an endpoint until its deadline, :meth:`close` or
    its own ``cancel()``. A removed endpoint drains: it takes no new calls, its calls in flight
    finish, then its channel closes. A channel dropped without being closed warns
    (``ResourceWarning``) and is closed when garbage collected.
    """

    def __init__(
        self,
        client: EtcdClient,
        target: str,
        *,
        policy: str | Callable[[], Picker[Any]] = "round_robin",
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        compression: grpc.Compression | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        start_timeout: float | None = None,
        address_filter: AddressFilter | None = None,
        mass_removal: MassRemovalProtection | None = DEFAULT_MASS_REMOVAL,
        subset_size: int | None = None,
        client_id: int | str | None = None,
        zone: str | None = None,
        spill_threshold: float = DEFAULT_SPILL_THRESHOLD,
        health_check: str | None = None,
        outlier_detection: OutlierDetection | None = None,
        subset_ranks: bool = True,
    ) -> None:
        self.target = target
        self._options = PoolOptions(
            policy=policy,
            credentials=credentials,
            options=tuple(options),
            interceptors=tuple(interceptors or ()),
            compression=compression,
            drain_timeout=drain_timeout,
            start_timeout=start_timeout,
            address_filter=address_filter,
            mass_removal=mass_removal,
            selection=SelectionConfig(subset_size, client_id, zone, spill_threshold, subset_ranks),
            health_check=health_check,
            outlier_detection=outlier_detection,
        )
        self._watcher = Watcher(client, target, start_timeout=start_timeout)
        self._pool = Pool(target, self._options, client)
        # The channel is a plain object (closed from any task, like every grpc.aio channel), so
        # the pool's task group lives in a task of its own; close() cancels and joins it. The
        # task runs the pool, which never refers back to this object.
        self._host: TaskHost | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        self._host = host = TaskHost(f"aiodiscovery pool {self.target}")
        await host.open()
        try:
            await host.start(self._pool.serve, self._watcher, name=f"{self.target}: following etcd")
        except BaseException:
            # The first endpoint set never came (or resolve() itself was cancelled): nobody
            # will ever close this channel, so the task, the watcher and its etcd stream go now.
            await host.close()
            raise
        # The pool, not this object: metrics must not keep a dropped channel alive.
        track(self._pool, "pool")

    async def close(self, grace: float | None = None) -> None:
        """Stop following etcd and close every subchannel, letting calls run for ``grace`` s.

        Calls in flight get ``grace`` seconds to finish, then grpc.aio cancels them, as on any
        of its channels. A call still waiting for an endpoint (``wait_for_ready``) fails at once
        with ``CANCELLED`` and details ``"channel closed"``: an error rather than
        ``asyncio.CancelledError``, so that the task awaiting it is not taken for a cancelled one.
        """
        pool = self._pool
        if pool.closed:
            return
        pool.begin_close(grace)
        if self._host is not None:
            await self._host.close()
        pool.set_state(_State.SHUTDOWN)

    async def __aenter__(self) -> BalancedChannel:
        if self._pool.closed:
            raise grpc.aio.UsageError("Channel is closed.")
        if self._host is None:
            await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self) -> None:
        # As asyncio does for an unclosed transport: say so, and release what can be released.
        # The pool's task does the releasing (subchannels, watcher, etcd stream) on its loop.
        host: TaskHost | None = getattr(self, "_host", None)
        if host is None or not host.running or self._pool.closed:
            return
        warnings.warn(
            f"unclosed BalancedChannel {self.target!r}: close it, or use 'async with'",
            ResourceWarning,
            source=self,
            stacklevel=1,
        )
        host.call_soon_threadsafe(_abandon, self._pool, host)

    # -- grpc.aio.Channel -------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY if any subchannel is READY, else the most hopeful state among them.

        With no endpoint at all the state is TRANSIENT_FAILURE; after :meth:`close`, SHUTDOWN.
        """
        if try_to_connect:
            self._pool.connect()
        return self._pool.state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until :meth:`get_state` differs from ``last_observed_state``."""
        await self._pool.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until at least one subchannel is READY."""
        while (state := self.get_state(try_to_connect=True)) is not _State.READY:
            if state is _State.SHUTDOWN:
                raise RuntimeError("the channel is closed")
            if self._pool.stop_reason is not None:
                raise RuntimeError(self._pool.stop_reason)
            await self.wait_for_state_change(state)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A multi-callable for a unary-unary method, balanced per call."""
        key = (CallKind.UNARY_UNARY, method, request_serializer, response_deserializer)
        return multi_callable(self._pool, (*key, _registered_method))

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A multi-callable for a unary-stream method, balanced per call."""
        key = (CallKind.UNARY_STREAM, method, request_serializer, response_deserializer)
        return multi_callable(self._pool, (*key, _registered_method))

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A multi-callable for a stream-unary method, balanced per call."""
        key = (CallKind.STREAM_UNARY, method, request_serializer, response_deserializer)
        return multi_callable(self._pool, (*key, _registered_method))

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A multi-callable for a stream-stream method, balanced per call."""
        key = (CallKind.STREAM_STREAM, method, request_serializer, response_deserializer)
        return multi_callable(self._pool, (*key, _registered_method))

    # -- introspection ----------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Subchannels by address (state, calls in flight, picks), totals and failures."""
        return self._pool.statistics()

    def __repr__(self) -> str:
        stats = self.statistics()
        states = " ".join(f"{k}={v}" for k, v in sorted(stats.by_state().items())) or "no endpoints"
        return (
            f"<BalancedChannel {self.target!r} {self._pool.state.name} {states} "
            f"in_flight={stats.in_flight} picks={stats.picks}>"
        )


def _abandon(pool: Pool, host: TaskHost) -> None:
    """Release what a channel dropped without close() holds, on its loop."""
    pool.begin_close(None)
    host.cancel()


async def resolve(
    client: EtcdClient,
    target: str,
    *,
    policy: str | Callable[[], Picker[Any]] = "round_robin",
    credentials: grpc.ChannelCredentials | None = None,
    options: Iterable[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    compression: grpc.Compression | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    start_timeout: float | None = None,
    address_filter: AddressFilter | None = None,
    mass_removal: MassRemovalProtection | None = DEFAULT_MASS_REMOVAL,
    subset_size: int | None = None,
    client_id: int | str | None = None,
    zone: str | None = None,
    spill_threshold: float = DEFAULT_SPILL_THRESHOLD,
    health_check: str | None = None,
    outlier_detection: OutlierDetection | None = None,
    subset_ranks: bool = True,
    engine: str = "pool",
    xds_policy: XdsPolicy | None = None,
) -> BalancedChannel | grpc.aio.Channel:
    """Return a :class:`BalancedChannel` over the endpoints registered under ``target``.

    ``target`` is ``"etcd:///foo/bar/my-service"`` or ``"foo/bar/my-service"``. The channel is
    returned once the current endpoint set is loaded (an empty one included); it then follows
    etcd until closed. ``policy`` is ``"round_robin"`` (default), ``"pick_first"``, ``"p2c"``,
    ``"weighted"`` or a :class:`Picker` factory; ``credentials``, ``options``, ``interceptors``
    and ``compression`` apply to every subchannel as in ``grpc.aio.secure_channel``.

    An endpoint is dialled only if its ``Addr`` is ``host:port``, ``[IPv6]:port`` or
    ``IPv4:port`` (never read as a gRPC target URI) and ``address_filter(address)`` (if given,
    for example :func:`allow_networks`) admits it; without a filter, unspecified (``0.0.0.0``,
    ``::``), link-local and multicast addresses are refused (:func:`address_refusal` says why)
    and loopback is allowed. The others are skipped with a warning and listed in
    ``statistics().skipped``.

    ``mass_removal`` (a :class:`MassRemovalProtection`) keeps removed endpoints that are still
    READY in use for a while when most of the service vanishes from the registry at once;
    ``None`` turns that off.

    ``subset_size=N`` connects to exactly ``min(N, endpoints)`` of the endpoints (plus, while
    some of those are unhealthy, as many healthy stand-ins), chosen so that many clients spread
    evenly over the servers and a server coming or going moves only its own connections. Each
    client needs a rank: an integer ``client_id`` is one (an instance number: 0, 1, 2, ...);
    otherwise, with ``subset_ranks=True`` (the default), the channel claims the lowest free rank
    from etcd under a key of its own with a lease (``_aiodiscovery/ranks/<target>/<rank>``, value
    ``client_id`` or the process's ``"<host name>/<process id>"``), and with
    ``subset_ranks=False`` it is placed by the hash of that id (spreading only as evenly as
    random subsetting). ``zone="eu-west-1a"`` sends calls to the endpoints
    whose metadata names that zone (the string ``"zone=eu-west-1a"``, URL query form) while at
    least ``spill_threshold`` (default 0.5) of them are healthy, and to other zones' too below
    that; with both, the subset is drawn within the zone, and spilling over tops its healthy
    endpoints up to ``N`` from the other zones. ``statistics().selection`` says what was chosen
    and how.

    ``health_check`` (a service name; ``""`` for the whole server) keeps a standard
    ``grpc.health.v1.Health/Watch`` stream per subchannel: an endpoint takes new calls only
    while it answers SERVING (one without the health service counts as healthy). With
    ``outlier_detection`` (an :class:`OutlierDetection`), endpoints whose calls fail more than
    the others' are ejected for a while. With no usable endpoint left, calls fail at once with
    ``UNAVAILABLE`` saying why, or wait with ``wait_for_ready=True``.

    A ``retryPolicy`` (and ``retryThrottling``) in the ``("grpc.service_config", json)`` option
    is honoured by the pool for unary-unary and unary-stream methods: each attempt goes to an
    endpoint picked anew, preferring one not tried. A call that failed without ever leaving this
    client (its endpoint's connection had just broken) is sent once more to another READY
    endpoint, policy or not. ``("grpc.enable_retries", 0)`` turns all of this off (and grpc's
    own retries in the subchannels): every call is then grpc.aio's own call object.

    ``engine="xds"`` returns grpc's own channel on ``xds:///<service>`` instead, balanced by grpc
    core from a control plane in this process (:func:`local_xds_server`) that follows the
    registry: ``policy`` ``"round_robin"`` or ``"pick_first"``, ``outlier_detection``, or an
    :class:`XdsPolicy` as ``xds_policy``; the pool's own options are refused. See the xDS guide.
    """
    if engine == "xds":
        pool_only = {
            "drain_timeout": drain_timeout != DEFAULT_DRAIN_TIMEOUT,
            "address_filter": address_filter is not None,
            "mass_removal": mass_removal is not DEFAULT_MASS_REMOVAL,
            "subset_size": subset_size is not None,
            "client_id": client_id is not None,
            "subset_ranks": subset_ranks is not True,
            "zone": zone is not None,
            "spill_threshold": spill_threshold != DEFAULT_SPILL_THRESHOLD,
            "health_check": health_check is not None,
        }
        return await xds_channel(
            client,
            target,
            pool_policy=policy,
            outlier_detection=outlier_detection,
            xds_policy=xds_policy,
            credentials=credentials,
            options=options,
            interceptors=interceptors,
            compression=compression,
            start_timeout=start_timeout,
            refused=[name for name, given in pool_only.items() if given],
        )
    if engine != "pool" or xds_policy is not None:
        raise ValueError(f"engine {engine!r}: 'pool' (the default) or 'xds' (xds_policy needs it)")
    channel = BalancedChannel(
        client,
        target,
        policy=policy,
        credentials=credentials,
        options=options,
        interceptors=interceptors,
        compression=compression,
        drain_timeout=drain_timeout,
        start_timeout=start_timeout,
        address_filter=address_filter,
        mass_removal=mass_removal,
        subset_size=subset_size,
        client_id=client_id,
        zone=zone,
        spill_threshold=spill_threshold,
        health_check=health_check,
        outlier_detection=outlier_detection,
        subset_ranks=subset_ranks,
    )
    await channel._open()
    return channel

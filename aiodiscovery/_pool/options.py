"""A channel's settings as one frozen record: ``resolve()``'s keywords, validated once.

:func:`~aiodiscovery.resolve` and :class:`~aiodiscovery.BalancedChannel` keep their keyword API
for users; both build a :class:`PoolOptions`, and the pool and everything under it take that one
record instead of a dozen parameters each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from .._balancer.choice import make_picker
from .._balancer.policies import Picker
from .._logsafe import Labelled
from .._resilience.outlier import OutlierDetection
from .._resilience.retrypolicy import RetryConfig, retry_config
from .._selection.address import Address, AddressFilter
from .._selection.protection import MassRemovalProtection
from .._selection.selection import SelectionConfig

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DEFAULT_IDLE_TIMEOUT", "DEFAULT_MASS_REMOVAL", "PoolOptions"]

DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_MASS_REMOVAL = MassRemovalProtection()
# grpc's own channel option and default: a channel with no call for that long goes IDLE.
IDLE_TIMEOUT_OPTION = "grpc.client_idle_timeout_ms"
DEFAULT_IDLE_TIMEOUT = 30 * 60.0
# grpc reads INT_MAX milliseconds as "never".
_NEVER_MS = 2**31 - 1
_DEFAULT_POLICY = "round_robin"


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """How a channel dials, picks and protects itself (see :func:`~aiodiscovery.resolve`)."""

    policy: str | Callable[[], Picker[Any]] = _DEFAULT_POLICY
    credentials: grpc.ChannelCredentials | None = None
    options: tuple[tuple[str, Any], ...] = ()
    interceptors: tuple[grpc.aio.ClientInterceptor, ...] = ()
    compression: grpc.Compression | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    start_timeout: float | None = None
    address_filter: AddressFilter | None = None
    mass_removal: MassRemovalProtection | None = DEFAULT_MASS_REMOVAL
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    health_check: str | None = None
    outlier_detection: OutlierDetection | None = None
    eager: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.eager, bool):
            raise TypeError(f"eager must be True or False, not {self.eager!r}")
        self.idle_timeout()
        if self.health_check is not None and not isinstance(self.health_check, str):
            raise TypeError(f"health_check must be a service name (str), not {self.health_check!r}")
        if self.outlier_detection is not None and not isinstance(
            self.outlier_detection, OutlierDetection
        ):
            raise TypeError("outlier_detection must be an aiodiscovery.OutlierDetection")

    def idle_timeout(self) -> float | None:
        """Seconds without calls after which the channel goes IDLE; None: never.

        ``("grpc.client_idle_timeout_ms", ms)`` in :attr:`options`, read as grpc reads it (the
        last one given wins; ``2**31 - 1`` means never), else grpc's 30 minutes; with
        :attr:`eager` and no such option, never: an eager channel keeps its connections.
        """
        given = [value for key, value in self.options if key == IDLE_TIMEOUT_OPTION]
        if not given:
            return None if self.eager else DEFAULT_IDLE_TIMEOUT
        ms = given[-1]
        if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
            raise ValueError(
                f"{IDLE_TIMEOUT_OPTION} must be a whole number of milliseconds >= 0, not {ms!r}"
            )
        return None if ms >= _NEVER_MS else ms / 1000

    def picker(self, configured: str | None = None) -> Picker[Any]:
        """A fresh picker (``ValueError``/``TypeError`` for a bad policy).

        ``configured`` is the service config's policy: it wins over the default ``policy``, as
        in grpc core; a ``policy=`` of another name given beside it is refused.
        """
        policy = self.policy
        if configured is not None and policy != configured:
            if policy != _DEFAULT_POLICY:
                raise ValueError(
                    f"policy={policy!r} and the service config's {configured!r} disagree"
                )
            policy = configured
        return make_picker(policy)

    def health_service(self, configured: str | None) -> str | None:
        """The service the health checks ask about: ``health_check`` or the service config's
        ``healthCheckConfig.serviceName`` (``configured``); refused if both differ."""
        given = self.health_check
        if given is not None and configured is not None and given != configured:
            raise ValueError(
                f"health_check={given!r} and the service config's healthCheckConfig "
                f"serviceName {configured!r} disagree"
            )
        return configured if given is None else given

    def retry(self, log: Labelled) -> tuple[RetryConfig, list[tuple[str, Any]]]:
        """The pool's retry rules (logging through ``log``) and the options its subchannels get.

        The pool retries by the service config's retryPolicy itself, so the subchannels get it
        without: a retry underneath would multiply attempts on one endpoint. Likewise the pool
        decides when the whole channel goes IDLE, so no subchannel idles on its own.
        """
        retry, options = retry_config(self.options, log)
        options = [(key, value) for key, value in options if key != IDLE_TIMEOUT_OPTION]
        return retry, [
            *options,
            ("grpc.use_local_subchannel_pool", 1),
            (IDLE_TIMEOUT_OPTION, _NEVER_MS),
        ]

    def dial(self, address: Address, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """The ``grpc.aio`` channel of one subchannel: to ``address`` and nowhere else."""
        interceptors = list(self.interceptors) or None
        if self.credentials is None:
            return grpc.aio.insecure_channel(
                address.target,
                options=options,
                compression=self.compression,
                interceptors=interceptors,
            )
        return grpc.aio.secure_channel(
            address.target,
            self.credentials,
            options=options,
            compression=self.compression,
            interceptors=interceptors,
        )

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

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DEFAULT_MASS_REMOVAL", "PoolOptions"]

DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_MASS_REMOVAL = MassRemovalProtection()


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """How a channel dials, picks and protects itself (see :func:`~aiodiscovery.resolve`)."""

    policy: str | Callable[[], Picker[Any]] = "round_robin"
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

    def __post_init__(self) -> None:
        if self.health_check is not None and not isinstance(self.health_check, str):
            raise TypeError(f"health_check must be a service name (str), not {self.health_check!r}")
        if self.outlier_detection is not None and not isinstance(
            self.outlier_detection, OutlierDetection
        ):
            raise TypeError("outlier_detection must be an aiodiscovery.OutlierDetection")

    def picker(self) -> Picker[Any]:
        """A fresh picker for :attr:`policy` (``ValueError``/``TypeError`` for a bad one)."""
        return make_picker(self.policy)

    def retry(self, log: Labelled) -> tuple[RetryConfig, list[tuple[str, Any]]]:
        """The pool's retry rules (logging through ``log``) and the options its subchannels get.

        The pool retries by the service config's retryPolicy itself, so the subchannels get it
        without: a retry underneath would multiply attempts on one endpoint.
        """
        retry, options = retry_config(self.options, log)
        return retry, [*options, ("grpc.use_local_subchannel_pool", 1)]

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

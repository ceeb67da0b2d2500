"""The parts of the standard service config that pick the pool's balancer and health checks.

``resolve(options=[("grpc.service_config", json)])`` is read as grpc core reads it where the
pool stands in for core: retries in :mod:`aiodiscovery._resilience.retrypolicy`, and here

- ``healthCheckConfig.serviceName`` (gRFC A17) turns on the pool's health checking, as
  ``health_check=`` does. grpc core runs it only under a balancer other than pick_first; the
  pool runs it under any policy (its pick_first moves on from an unhealthy endpoint too).
- ``loadBalancingConfig`` (the first entry the pool knows: ``pick_first`` or ``round_robin``)
  or the older ``loadBalancingPolicy`` chooses the pool's ``policy``, as the service config's
  choice beats the channel's own in grpc core. A list naming no policy the pool knows is an
  error, as in grpc core.

The subchannels' own channels get neither (see ``retry_config``): the pool does both itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._resilience.retrypolicy import SERVICE_CONFIG, invalid_config, load_document

__all__ = ["ChannelRules", "channel_rules"]

# The balancers of grpc's service config the pool implements, by their service config name.
_POLICIES = {"pick_first": "pick_first", "round_robin": "round_robin"}


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """What the service config says about the pool's balancer and health checks."""

    # The policy name, or None when the service config names none.
    policy: str | None = None
    # healthCheckConfig.serviceName, or None when health checking is not asked for.
    health_check: str | None = None


def channel_rules(options: Iterable[tuple[str, Any]]) -> ChannelRules:
    """Read the balancer and the health check service from the service config in ``options``.

    Raises ``ValueError`` naming the field when they break grpc's rules.
    """
    document: dict[str, Any] | None = None
    for key, value in options:
        if key == SERVICE_CONFIG:
            document = load_document(value)
    if document is None:
        return ChannelRules()
    return ChannelRules(_policy(document), _health_check(document.get("healthCheckConfig")))


def _policy(document: dict[str, Any]) -> str | None:
    configs = document.get("loadBalancingConfig")
    if configs is not None:
        if not isinstance(configs, list):
            raise invalid_config("loadBalancingConfig must be a list")
        names = []
        for i, entry in enumerate(configs):
            if not isinstance(entry, dict) or len(entry) != 1:
                raise invalid_config(f"loadBalancingConfig[{i}] must be an object with one key")
            [name] = entry
            if name in _POLICIES:
                return _POLICIES[name]
            names.append(name)
        if names:
            raise invalid_config(
                f"loadBalancingConfig names no policy the pool implements ({', '.join(names)}); "
                f"it knows {', '.join(_POLICIES)}"
            )
    name = document.get("loadBalancingPolicy")
    if name is None:
        return None
    if not isinstance(name, str) or name.lower() not in _POLICIES:
        raise invalid_config(
            f"loadBalancingPolicy {name!r} is not a policy the pool implements "
            f"({', '.join(_POLICIES)})"
        )
    return _POLICIES[name.lower()]


def _health_check(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_config("healthCheckConfig must be an object")
    service = value.get("serviceName")
    if service is not None and not isinstance(service, str):
        raise invalid_config(f"healthCheckConfig.serviceName must be a string, not {service!r}")
    return service

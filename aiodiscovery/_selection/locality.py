"""Locality: which zone an endpoint is in, and when a client stops keeping its calls in its own.

An endpoint names its zone in its metadata, in the Go-safe form the weights use: a string in URL
query form, ``"weight=2&zone=eu-west-1a"`` (a JSON object's ``"zone"`` member is read too, for
registries written before that form). A client given ``zone=`` sends its calls to endpoints of
that zone while enough of them are healthy. Below the *spill threshold* (the fraction of the
zone's endpoints that must be healthy; 0.5 by default, Envoy's default panic threshold) it
spills over: the endpoints of the other zones take calls too, until the zone is healthy again.
"""

from __future__ import annotations

from .._codec.endpoint import metadata_attributes

__all__ = ["DEFAULT_SPILL_THRESHOLD", "endpoint_zone", "should_spill"]

#: The fraction of a zone's endpoints that must be healthy for its clients to stay in it.
DEFAULT_SPILL_THRESHOLD = 0.5


def endpoint_zone(metadata: object) -> str | None:
    """The ``zone`` attribute of endpoint metadata (see :func:`metadata_attributes`), or None.

    The Go-safe string form (``"zone=eu-1"``) and a JSON object's ``"zone"`` both count; an
    empty zone is none. Never raises.
    """
    return metadata_attributes(metadata).get("zone") or None


def should_spill(healthy: int, total: int, threshold: float) -> bool:
    """Whether calls must go to other zones too: the zone has no endpoint, or fewer than
    ``threshold`` of its ``total`` endpoints are ``healthy``."""
    return total == 0 or healthy < threshold * total

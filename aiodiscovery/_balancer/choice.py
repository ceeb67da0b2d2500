"""The policies known by name, and building the picker a ``policy=`` argument asks for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .loadaware import LeastRequest, WeightedRoundRobin
from .policies import P2CPicker, Picker, PickFirstPicker, RoundRobinPicker, WeightedPicker

__all__ = ["POLICIES", "make_picker"]

POLICIES: dict[str, Callable[[], Picker[Any]]] = {
    "round_robin": RoundRobinPicker,
    "pick_first": PickFirstPicker,
    "p2c": P2CPicker,
    "weighted": WeightedPicker,
    "weighted_round_robin": WeightedRoundRobin(),
    "least_request": LeastRequest(),
}


def make_picker(policy: str | Callable[[], Picker[Any]]) -> Picker[Any]:
    """Build the picker for ``policy``: a name from :data:`POLICIES` or a picker factory."""
    if isinstance(policy, str):
        try:
            factory = POLICIES[policy]
        except KeyError:
            raise ValueError(
                f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)} "
                "or pass a Picker subclass"
            ) from None
        return factory()
    picker = policy()
    if not isinstance(picker, Picker):
        raise TypeError(f"policy factory returned {type(picker).__name__}, not a Picker")
    return picker

"""Metadata values nested to any depth: written, compared and shown without recursion.

CPython compares and prints nested lists and dicts recursively, within its recursion limit of
about 1,000 levels; metadata Go accepts may nest 10,000 deep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["Shape", "held_size", "json_equal", "render", "safe_repr"]

# A container to write: its opening and closing text and its (separator and key, child) pairs.
Shape = tuple[str, str, Iterator[tuple[str, Any]]]


def render(value: Any, expand: Callable[[Any, bool, int], str | Shape]) -> str:
    """Write a nested value without recursion.

    ``expand(item, on_path, depth)`` returns the text of a scalar, or the :data:`Shape` of a
    container; ``on_path`` says the item is a container already open above it (a cycle).
    """
    parts: list[str] = []
    stack: list[tuple[Iterator[tuple[str, Any]], str, int]] = []
    path: set[int] = set()
    current = value
    while True:
        shape = expand(current, id(current) in path, len(stack))
        if isinstance(shape, str):
            parts.append(shape)
        else:
            opening, closing, items = shape
            parts.append(opening)
            stack.append((items, closing, id(current)))
            path.add(id(current))
        while stack:
            items, closing, ident = stack[-1]
            item = next(items, None)
            if item is not None:
                parts.append(item[0])
                current = item[1]
                break
            parts.append(closing)
            stack.pop()
            path.discard(ident)
        else:
            return "".join(parts)


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool | str):
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "other"


def json_equal(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same JSON value, however deeply nested.

    Numbers compare by value (``1 == 1.0``), but ``true`` is not ``1``; a tuple equals a list with
    the same items. Values JSON cannot hold compare with ``==``.
    """
    stack = [(a, b)]
    seen: set[tuple[int, int]] = set()
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        kind = _json_kind(x)
        if kind != _json_kind(y):
            return False
        if kind == "array":
            if len(x) != len(y):
                return False
        elif kind == "object":
            if len(x) != len(y) or x.keys() != y.keys():
                return False
        else:
            if x != y:
                return False
            continue
        pair = (id(x), id(y))
        if pair in seen:
            continue  # a cycle: equal so far means equal
        seen.add(pair)
        stack.extend(zip(x, y, strict=True) if kind == "array" else ((x[k], y[k]) for k in x))
    return True


def safe_repr(value: Any) -> str:
    """``repr(value)`` for dicts, lists and tuples nested to any depth (Python's recurses)."""

    def expand(item: Any, on_path: bool, _: int) -> str | Shape:
        kind = type(item)
        if kind not in (dict, list, tuple):
            return repr(item)
        if on_path:
            return "{...}" if kind is dict else "[...]" if kind is list else "(...)"
        if kind is dict:
            pairs = ((f"{', ' if i else ''}{k!r}: ", v) for i, (k, v) in enumerate(item.items()))
            return "{", "}", pairs
        items = ((", " if i else "", v) for i, v in enumerate(item))
        if kind is list:
            return "[", "]", items
        return "(", ",)" if len(item) == 1 else ")", items

    return render(value, expand)


def held_size(value: Any, limit: int) -> int:
    """The bytes a decoded JSON value holds: ``sys.getsizeof`` of it and of everything in it.

    An object shared by several places (a small int, a dict key the scanner reused) is counted
    at each, so this is at least what the value keeps alive. Counting stops once the total
    passes ``limit``: the cost of asking is bounded by the limit, not by the value.
    """
    getsizeof = sys.getsizeof
    total = getsizeof(value)
    stack = [value] if type(value) in (dict, list) else []
    while stack and total <= limit:
        item = stack.pop()
        if type(item) is dict:
            total += sum(map(getsizeof, item))
            item = item.values()
        total += sum(map(getsizeof, item))
        if total <= limit:
            stack.extend(child for child in item if type(child) in (dict, list))
    return total

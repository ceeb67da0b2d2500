"""The package's shape: small modules, no import cycle, nothing of aetcd's internals used."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import aetcd.client

import aiodiscovery

from .test_cli_structure import imports, module_name

PACKAGE = Path(aiodiscovery.__file__).parent
FILES = sorted(PACKAGE.rglob("*.py"))
# One module per concept: the issue asked for "no module over ~450 lines".
MAX_LINES = 450


def test_every_module_is_small() -> None:
    assert len(FILES) > 40
    large = {module_name(p): n for p in FILES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert large == {}


def test_no_import_cycle_anywhere_in_the_package() -> None:
    # Every import counts, those under TYPE_CHECKING too: a cycle there is a cycle in the design.
    graph: dict[str, set[str]] = {module_name(p): set() for p in FILES}
    for path in FILES:
        name = module_name(path)
        for module, names in imports(path):
            targets = {module, *(f"{module}.{n}" for n in names)}
            # The package's own __init__ only re-exports: importing it is importing the API.
            graph[name] |= {t for t in targets if t in graph and t != "aiodiscovery"} - {name}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, nxt]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for m in graph if m != "aiodiscovery" and (c := cycle_from(m)) is not None]
    assert cycles == []


def aetcd_private_names() -> set[str]:
    """Every underscore attribute aetcd's client sets or reads on itself."""
    tree = ast.parse(inspect.getsource(aetcd.client))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def test_no_private_attribute_of_aetcd_is_used() -> None:
    # By name: any underscore attribute aetcd's client uses, read on something other than our own
    # object, or on ourselves inside a class that subclasses aetcd.Client (our aetcd view).
    private = aetcd_private_names()
    assert {"_connected", "_timeout", "_watcher"} <= private
    used = []
    for path in FILES:
        tree = ast.parse(path.read_text())
        inside_aetcd_subclass: set[int] = set()
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any("aetcd" in ast.unparse(b) for b in cls.bases):
                inside_aetcd_subclass |= {id(n) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in private):
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if not on_self or id(node) in inside_aetcd_subclass:
                used.append(f"{module_name(path)}:{node.lineno} .{node.attr}")
    assert used == []

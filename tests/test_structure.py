"""The package's shape: subsystems that import one way, no cycle, foreign internals quarantined.

The layer table below is the architecture's contract (the README's architecture section shows the
same table). A module past ``SIZE_ALARM`` lines is a smell, not an error, as long as it says why it
is one piece (a ``# size:`` comment): nothing is split merely to fit a number.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import aetcd.client
import grpc.aio._call
import pytest

import aiodiscovery

from .test_cli_structure import imports, module_name

PACKAGE = Path(aiodiscovery.__file__).parent
FILES = sorted(PACKAGE.rglob("*.py"))
SIZE_ALARM = 600

# The root's leaves: small helpers every subsystem may use, importing nothing of the package.
KERNEL = {
    "_exceptions",
    "_logsafe",
    "_backoff",
    "_taskgroup",
    "_statecell",
    "_grpccall",
    "_healthproto",
    "_orcaproto",
}
# Each unit (a subsystem package or a root module) and the units it may import, bottom up.
# Anything not named here may not be imported by the unit.
LAYERS: dict[str, set[str]] = {
    "kernel": set(),
    "_codec": {"kernel"},
    "_metrics": {"kernel", "_codec"},
    "_etcd": {"kernel", "_codec", "_metrics"},
    "_registrar": {"kernel", "_codec", "_metrics", "_etcd"},
    # Subsetting ranks keep their lease alive the way a registration does.
    "_naming": {"kernel", "_codec", "_etcd", "_registrar"},
    "_balancer": {"kernel", "_codec"},
    "_selection": {"kernel", "_codec"},
    # A gRPC server's side of the balancing: load reports.
    "_server": {"kernel"},
    "_resilience": {"kernel", "_codec", "_balancer"},
    # The registry as an xDS control plane: grpc core balances, so no pool below it.
    "_xds": {"kernel", "_codec", "_etcd", "_naming", "_selection"},
    "_pool": {
        "kernel",
        "_codec",
        "_metrics",
        "_etcd",
        "_naming",
        "_balancer",
        "_selection",
        "_resilience",
        # resolve(engine="xds") only dispatches to _xds.
        "_xds",
    },
    # The public face and the tools built on it.
    "__init__": {
        "kernel",
        "_codec",
        "_etcd",
        "_naming",
        "_registrar",
        "_server",
        "_balancer",
        "_selection",
        "_resilience",
        "_pool",
        "_xds",
    },
    "__main__": {"_cli"},
    "_cli": {"public"},
    "testing": {"kernel", "public"},
}


def unit_of(module: str) -> str | None:
    """The layer-table unit of a module of the package (``None`` for outside modules)."""
    parts = module.split(".")
    if parts[0] != "aiodiscovery":
        return None
    if len(parts) == 1:
        return "__init__"
    head = parts[1]
    if head in KERNEL:
        return "kernel"
    return head


def internal_edges(path: Path) -> set[tuple[str, str]]:
    """(importer, imported) module pairs, type-only imports included."""
    name = module_name(path)
    found = set()
    for module, names in imports(path):
        if module.split(".")[0] != "aiodiscovery":
            continue
        for target in (module, *(f"{module}.{n}" for n in names)):
            if (PACKAGE.parent / (target.replace(".", "/") + ".py")).exists() or (
                PACKAGE.parent / target.replace(".", "/") / "__init__.py"
            ).exists():
                found.add((name, target))
    return found


def layer_violations(edges: set[tuple[str, str]]) -> list[str]:
    wrong = []
    for importer, imported in sorted(edges):
        source, target = unit_of(importer), unit_of(imported)
        if source is None or target is None or source == target:
            continue
        if target == "__init__" or imported == "aiodiscovery.testing":
            target = "public"
        if target not in LAYERS[source]:
            wrong.append(f"{importer} -> {imported} ({source} may not import {target})")
    return wrong


def test_every_module_belongs_to_a_unit_of_the_layer_table() -> None:
    units = {unit_of(module_name(p)) for p in FILES}
    assert units <= set(LAYERS), units - set(LAYERS)
    # The root holds only the kernel's leaves, the metrics and the package's faces.
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root == {*KERNEL, "_metrics", "__init__", "__main__"}


def test_imports_follow_the_layer_table() -> None:
    edges = set().union(*(internal_edges(p) for p in FILES))
    assert len(edges) > 100
    assert layer_violations(edges) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("aiodiscovery._codec.endpoint", "aiodiscovery._etcd.client"),
        ("aiodiscovery._balancer.policies", "aiodiscovery._pool.pool"),
        ("aiodiscovery._etcd.kv", "aiodiscovery._naming.manager"),
        ("aiodiscovery._registrar.lease", "aiodiscovery._pool.channel"),
        ("aiodiscovery._logsafe", "aiodiscovery._codec.endpoint"),
        ("aiodiscovery._cli._list", "aiodiscovery._naming.watcher"),
        ("aiodiscovery._xds.catalog", "aiodiscovery._pool.channel"),
        ("aiodiscovery._xds.server", "aiodiscovery._registrar.registrar"),
    ],
)
def test_the_layer_check_refuses_a_wrong_direction(importer: str, imported: str) -> None:
    assert layer_violations({(importer, imported)}) != []


def test_large_modules_say_why_they_are_one_piece() -> None:
    texts = {module_name(p): p.read_text() for p in FILES}
    large = {
        name: len(text.splitlines())
        for name, text in texts.items()
        if len(text.splitlines()) > SIZE_ALARM and "# size:" not in text
    }
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


def private_names(module: object) -> set[str]:
    """Every underscore attribute a foreign module's classes set or read on themselves."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def foreign_private_uses(private: set[str]) -> dict[str, list[str]]:
    """Where the package reads one of ``private`` on something other than its own ``self``:
    as an attribute, or through ``getattr(obj, "_name")``. Inside a subclass of an aetcd class
    (our aetcd view), ``self`` is the foreign object, so those count too."""
    used: dict[str, list[str]] = {}
    for path in FILES:
        tree = ast.parse(path.read_text())
        inside_aetcd_subclass: set[int] = set()
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any("aetcd" in ast.unparse(b) for b in cls.bases):
                inside_aetcd_subclass |= {id(n) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
                if on_self and id(node) not in inside_aetcd_subclass:
                    continue
                used.setdefault(module_name(path), []).append(f"{node.lineno} .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "self")
            ):
                used.setdefault(module_name(path), []).append(f"{node.lineno} {node.args[1].value}")
    return used


def test_aetcd_internals_are_read_only_by_the_aetcd_view() -> None:
    private = private_names(aetcd.client)
    assert {"_connected", "_timeout", "_watcher"} <= private
    assert foreign_private_uses(private) == {}


def test_grpc_call_internals_are_read_only_by_the_call_status_module() -> None:
    # grpc.aio offers a finished call's status only through coroutines; one module reads it
    # synchronously from the call's private attributes, and no other module may.
    private = private_names(grpc.aio._call) - {"_loop", "_channel"}
    assert "_cython_call" in private
    uses = foreign_private_uses(private)
    assert set(uses) == {"aiodiscovery._balancer.callstatus"}, uses

"""Griffe extension: the package's reST-flavoured docstrings, as Markdown for mkdocstrings.

The docstrings are written for readers of the source (and ``help()``): Sphinx roles
(``:class:`Endpoint```, ``:meth:`~EtcdClient.close```), ``::`` literal blocks and indented
definition lists. This extension rewrites them, once the package is loaded, so that they render
well without changing a module:

- a role whose name resolves, in the docstring's scope, to a public name of ``aiodiscovery`` or
  ``aiodiscovery.testing`` (or a member of one) becomes a cross-reference to its entry in the API
  reference (``[`EtcdClient.close()`][aiodiscovery.EtcdClient.close]``), which mkdocs-autorefs
  checks: an entry missing from the reference fails ``mkdocs build --strict``;
- a role naming a private or a built-in object becomes code;
- a role that names nothing at all, in a docstring the reference shows, logs a warning, so a typo
  fails the strict build too;
- ``text::`` followed by an indented block becomes ``text:`` and a fenced Python block;
- a line followed by a more indented paragraph (reST's definition list) becomes a Markdown
  definition list (the ``def_list`` extension).
"""

from __future__ import annotations

import builtins
import logging
import pkgutil
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import griffe

# Counted by mkdocs: a warning here fails `mkdocs build --strict`.
logger = logging.getLogger("mkdocs.plugins.aiodiscovery_docs")

_PUBLIC_PACKAGES = ("aiodiscovery", "aiodiscovery.testing")
_ROLE = re.compile(r":(?P<role>class|meth|func|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")
_CALLABLE_ROLES = {"meth", "func"}
_INDENT = re.compile(r"^(\s*)")


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` if it is ``aiodiscovery``."""
        if pkg.path != "aiodiscovery":
            return
        public = _public_roots(loader)
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            shown = _shown(obj, public)
            text = _rewrite_roles(obj, obj.docstring.value, public, loader, warn=shown)
            obj.docstring.value = _definition_lists(_literal_blocks(text))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _public_roots(loader: griffe.GriffeLoader) -> dict[str, str]:
    """Canonical path -> public path, for every name a public package exports (and the package)."""
    roots: dict[str, str] = {}
    for package in _PUBLIC_PACKAGES:
        module = loader.modules_collection.get_member(package)
        roots[module.path] = module.path
        for name in module.exports or ():
            member = module.members.get(str(name))
            if member is None:
                continue
            target = member.final_target if member.is_alias else member
            roots.setdefault(target.path, f"{package}.{name}")
    # The plugin module is public too: its docstring is the fixtures' reference.
    roots["aiodiscovery.testing.pytest_plugin"] = "aiodiscovery.testing.pytest_plugin"
    return roots


def _shown(obj: griffe.Object, public: dict[str, str]) -> bool:
    """Whether the API reference renders ``obj``'s docstring (a public name or a member of one)."""
    if obj.path in public:
        return True
    # A member of a public class (a module shows its own docstring only).
    parent = obj.parent
    while parent is not None and not parent.is_module:
        if obj.name.startswith("_"):
            return False
        if parent.path in public:
            return True
        obj, parent = parent, parent.parent
    return False


def _rewrite_roles(
    obj: griffe.Object,
    text: str,
    public: dict[str, str],
    loader: griffe.GriffeLoader,
    *,
    warn: bool,
) -> str:
    def replace(match: re.Match[str]) -> str:
        role, target = match["role"], match["target"]
        short = target.startswith("~")
        name = target.lstrip("~")
        shown_name = name.rsplit(".", 1)[-1] if short else name
        label = f"{shown_name}()" if role in _CALLABLE_ROLES else shown_name
        identifier = _public_identifier(obj, name, public, loader)
        if identifier is not None:
            return f"[`{label}`][{identifier}]"
        if warn and not _exists(obj, name, loader):
            logger.warning("%s: the docstring's :%s:`%s` names nothing", obj.path, role, target)
        return f"`{label}`"

    return _ROLE.sub(replace, text)


def _lookup(obj: griffe.Object, name: str, loader: griffe.GriffeLoader) -> list[griffe.Object]:
    """The objects ``name``'s dotted parts name, resolved in ``obj``'s scope ([] if none)."""
    parts = name.split(".")
    collection = loader.modules_collection
    try:
        if parts[0] == "aiodiscovery":
            chain: list[Any] = [collection.get_member("aiodiscovery")]
        elif parts[0] == "":
            # A relative module (``:mod:`._health```): private, shown as code.
            module = obj if obj.is_module else obj.module
            package = module if module.is_package or module.is_subpackage else module.parent
            return [package.get_member(name.lstrip("."))]
        else:
            scope = obj if obj.is_class or obj.is_module or obj.parent is None else obj.parent
            chain = [collection.get_member(scope.resolve(parts[0]))]
        for part in parts[1:]:
            current = _target(chain[-1])
            members = current.all_members if current.is_class else current.members
            chain.append(members[part])
    except (
        griffe.NameResolutionError,
        griffe.AliasResolutionError,
        griffe.CyclicAliasError,
        KeyError,
        ValueError,
        AttributeError,
    ):
        return []
    return chain


def _target(obj: Any) -> Any:
    return obj.final_target if obj.is_alias else obj


def _public_identifier(
    obj: griffe.Object, name: str, public: dict[str, str], loader: griffe.GriffeLoader
) -> str | None:
    """The reference entry ``name`` names, if it is a public name or a public member of one."""
    identifier: str | None = None
    for link in _lookup(obj, name, loader):
        try:
            path = _target(link).path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        if path in public:
            identifier = public[path]
        elif identifier is not None and not link.name.startswith("_"):
            identifier = f"{identifier}.{link.name}"
        else:
            identifier = None
    return identifier


def _exists(obj: griffe.Object, name: str, loader: griffe.GriffeLoader) -> bool:
    """Whether ``name`` names something: in the package, a built-in, or another package's."""
    if _lookup(obj, name, loader) or name.split(".", maxsplit=1)[0] in vars(builtins):
        return True
    try:
        pkgutil.resolve_name(name)
    except (ImportError, AttributeError, ValueError):
        return False
    return True


def _literal_blocks(text: str) -> str:
    """``text::`` and the indented block after it: ``text:`` and a fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.rstrip().endswith("::"):
            out.append(line)
            continue
        intro = line.rstrip()[:-2].rstrip()
        if intro:
            out.append(intro + ":")
        block: list[str] = []
        while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
            block.append(lines[index])
            index += 1
        while block and not block[-1].strip():
            block.pop()
        code = textwrap.dedent("\n".join(block)).strip("\n")
        out += ["", "```python", code, "```", ""]
    return "\n".join(out)


def _definition_lists(text: str) -> str:
    """A line followed by a more indented paragraph, outside code: a Markdown definition."""
    lines = text.split("\n")
    out: list[str] = []
    fenced = False
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.startswith("```"):
            fenced = not fenced
        following = lines[index] if index < len(lines) else ""
        is_term = (
            not fenced
            and line.strip()
            and not line.startswith(" ")
            and not line.lstrip().startswith(("-", "*"))
            and _indent(following) >= 4
            and following.strip()
        )
        if not is_term:
            out.append(line)
            continue
        out += ["", line]
        first = True
        while index < len(lines) and lines[index].strip() and _indent(lines[index]) >= 4:
            body = lines[index].strip()
            out.append((":   " if first else "    ") + body)
            first = False
            index += 1
        out.append("")
    return "\n".join(out)


def _indent(line: str) -> int:
    match = _INDENT.match(line)
    return len(match.group(1)) if match else 0

"""The command line is built on the public API only (size and cycles: tests/test_structure.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import aiodiscovery

PACKAGE = Path(aiodiscovery.__file__).parent
CLI_FILES = [PACKAGE / "__main__.py", *sorted((PACKAGE / "_cli").rglob("*.py"))]
PUBLIC = {"aiodiscovery", "aiodiscovery.testing"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in ``path``, relative ones made absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            if node.level:
                module = f"{base}.{module}" if module else base
            found.append((module, [alias.name for alias in node.names]))
    return found


def test_the_cli_imports_only_public_names() -> None:
    assert len(CLI_FILES) > 5
    private = []
    for path in CLI_FILES:
        for module, names in imports(path):
            if module.startswith("aiodiscovery._cli") or module.split(".")[0] != "aiodiscovery":
                continue
            if module not in PUBLIC:
                private.append(f"{module_name(path)}: {module}")
            private += [f"{module_name(path)}: {module}.{n}" for n in names if n.startswith("_")]
    assert private == []

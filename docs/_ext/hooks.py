"""MkDocs hooks: keep the API reference complete and the metrics table true to the code.

- Every name in ``aiodiscovery.__all__`` and ``aiodiscovery.testing.__all__`` must have exactly
  one ``::: aiodiscovery.Name`` block in ``docs/reference/``; a missing or doubled one is a
  warning, so ``mkdocs build --strict`` fails until the new public name gets its place.
- ``<!-- aiodiscovery:instruments -->`` in a page becomes the table of every OpenTelemetry
  instrument, read from ``aiodiscovery._metrics.INSTRUMENTS``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiodiscovery
import aiodiscovery.testing
from aiodiscovery import _metrics

# Counted by mkdocs: a warning here fails `mkdocs build --strict`.
logger = logging.getLogger("mkdocs.plugins.aiodiscovery_docs")

_BLOCK = re.compile(r"^:::\s+(\S+)", re.MULTILINE)
_INSTRUMENTS = "<!-- aiodiscovery:instruments -->"
_KINDS = {
    "counter": "Counter",
    "updown": "UpDownCounter",
    "gauge": "Gauge",
}


def on_config(config: Any, **kwargs: Any) -> Any:
    """Check that the reference pages document every public name, once each."""
    reference = Path(config["docs_dir"]) / "reference"
    blocks = Counter(
        identifier
        for page in sorted(reference.glob("*.md"))
        for identifier in _BLOCK.findall(page.read_text(encoding="utf-8"))
    )
    public = [f"aiodiscovery.{name}" for name in aiodiscovery.__all__]
    public += [f"aiodiscovery.testing.{name}" for name in aiodiscovery.testing.__all__]
    for identifier in public:
        if blocks[identifier] == 0:
            logger.warning(
                "%s is public but has no '::: %s' block in docs/reference/", identifier, identifier
            )
        elif blocks[identifier] > 1:
            logger.warning("%s has %d blocks in docs/reference/", identifier, blocks[identifier])
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Expand the instruments placeholder into a table."""
    if _INSTRUMENTS not in markdown:
        return markdown
    rows = [
        "| instrument | kind (observable) | unit | what |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| `{item.name}` | {_KINDS[item.kind]} | `{item.unit}` | {item.description} |"
        for item in _metrics.INSTRUMENTS
    ]
    return markdown.replace(_INSTRUMENTS, "\n".join(rows))

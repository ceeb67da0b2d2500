"""``python -m aiodiscovery`` and the ``aiodiscovery`` script: the command line (see
:mod:`._cli`)."""

from __future__ import annotations

import sys

from ._cli._main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

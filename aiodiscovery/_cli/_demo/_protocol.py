"""What the demo and its server processes share: the greeter method and the line protocol.

A server process reads its settings (with any password) as one JSON line on stdin, never from
its command line, then answers ``READY <address> <key>`` (or ``ERROR <message>``), obeys a
``deregister`` line with ``DEREGISTERED`` and a ``stop`` line with ``STOPPED``. End of input (the
demo went away) makes it deregister and stop by itself.
"""

from __future__ import annotations

__all__ = ["CHILD_EXIT_TIMEOUT", "CHILD_MODULE", "METHOD", "SERVICE"]

SERVICE = "demo.Greeter"
#: ``/demo.Greeter/SayHello``: UTF-8 bytes in, ``hello <name> from <server>`` out.
METHOD = f"/{SERVICE}/SayHello"
#: The module a server process runs (``python -m ...``).
CHILD_MODULE = "aiodiscovery._cli._demo._child"
#: How long a server may take to stop once told to.
CHILD_EXIT_TIMEOUT = 5.0

"""The ``aiodiscovery`` command line: inspect and edit a live registry, or watch a demo.

::

    aiodiscovery list foo/bar/my-service            # a table; --json for scripts
    aiodiscovery watch foo/bar/my-service           # every change as it happens, until Ctrl-C
    aiodiscovery add foo/bar/my-service/e1 10.0.0.1:50051 --weight 2
    aiodiscovery add foo/bar/my-service/e1 10.0.0.1:50051 --ttl 10   # leased, kept alive
    aiodiscovery del foo/bar/my-service/e1
    aiodiscovery demo                               # embedded etcd, three servers, a client

It uses the public API only (``aiodiscovery`` and ``aiodiscovery.testing``). Modules:

- ``_main``: ``main()``, running one command under SIGINT/SIGTERM, exit statuses;
- ``_parser``: the argument parser, built from the global options and each command's own;
- ``_settings`` and ``_credentials``: connection settings from options and ``ETCDCTL_*``
  variables, and the password from wherever it may come (never argv, preferably);
- ``_errors``, ``_argtypes``, ``_targets``, ``_output``, ``_logs``: failures and exit codes,
  option value types, services and keys named on the command line, what goes to stdout, what
  goes to stderr;
- ``_command``: what a command is; ``_list``, ``_watch``, ``_add``, ``_del``: one command each;
- ``_demo``: ``aiodiscovery demo``, a package of its own.

Nothing is imported here, so that a demo server process (``python -m
aiodiscovery._cli._demo._child``) loads only what it needs.
"""

"""``aiodiscovery demo``: service discovery at work, on an embedded etcd, in one command.

The demo starts an etcd (unless given one), three gRPC greeter servers as child processes, each
registering itself with a :class:`aiodiscovery.Registrar`, and a client in this process that calls
them through :func:`aiodiscovery.resolve` from a few concurrent callers. A line per second shows
where the calls go. Then:

1. steady: the calls spread over the three servers;
2. graceful stop: one server leaves its Registrar block (the lease is revoked, the key goes), the
   client stops picking it and drains its calls, and only then the server stops: no call fails;
3. crash: another server is SIGKILLed. Nobody deregisters it: its subchannel fails, so the
   client stops picking it, and etcd drops the key when the lease expires. Only calls sent to it
   fail: those in flight when it died, and any the client sent it before it saw the connection
   break;
4. scale out: a new server starts, registers, and takes its share.

Modules: ``_command`` (the options), ``_run`` (etcd, client, servers, in order, and cleanup),
``_script`` (the four phases), ``_traffic`` (callers, counters, the per-second line),
``_verdict`` (what counts as success, the summary), ``_servers`` (a child process seen from
here), ``_child`` (the server process itself) and ``_protocol`` (what the two say to each
other). Nothing is imported here: a server process loads only what it needs.
"""

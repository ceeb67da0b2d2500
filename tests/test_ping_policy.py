"""etcd's ping policy: a client of a whole cluster never draws GOAWAY "too_many_pings".

etcd's gRPC server (grpc-go, ``PermitWithoutStream: false``, ``MinTime`` 5 s by default) strikes a
ping on a connection without a stream if any ping came in the two hours before, and any ping under
5 s after the previous one; the third strike closes the connection with GOAWAY ENHANCE_YOUR_CALM,
and grpc core prints it at ERROR on the client's stderr. The client keeps a channel to every
member, and only one member serves its streams: the others are connections without a stream.

Why 27 s: with the keep-alive settings this replaced (a ping every 5 s, also without calls), the
first ping on an idle member's connection was free and the next three struck, so the GOAWAY came
20 s after connecting (seen here: ``Received a GOAWAY with error code ENHANCE_YOUR_CALM and debug
data equal to "too_many_pings"`` on both standby members). A shorter run would prove nothing.
"""

from __future__ import annotations

import re
import sys

import anyio.to_thread
import pytest

from aiodiscovery.testing import EtcdCluster

from .processes import Process, clean_env

pytestmark = pytest.mark.anyio

SECONDS = 27


async def test_a_client_of_a_cluster_draws_no_goaway_from_etcd() -> None:
    async with EtcdCluster(3) as cluster:
        # grpc core prints the GOAWAY at its default verbosity (ERROR): make sure nothing in the
        # caller's environment hides it.
        env = {k: v for k, v in clean_env().items() if not k.startswith("GRPC_")}
        command = [sys.executable, "-m", "tests.ping_child", "--urls", cluster.urls]
        with Process([*command, "--seconds", str(SECONDS)], env=env) as child:
            code = await anyio.to_thread.run_sync(child.wait, SECONDS + 45)
        assert code == 0, child.stderr
        assert "DONE" in child.stdout_lines
        assert not re.search(r"goaway|too_many_pings|ENHANCE_YOUR_CALM", child.stderr, re.I), (
            child.stderr
        )
        # Every member's connection lived through the run: a GOAWAY would have closed it.
        states = dict(line.split()[1:] for line in child.stdout_lines if line.startswith("STATE "))
        assert states == {m.url: "READY" for m in cluster.members}

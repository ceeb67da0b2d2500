"""Every example runs, against the session's etcd, and finishes by itself."""

from __future__ import annotations

import re
import signal
import sys

from aiodiscovery.testing import EtcdServer, etcd_binary

from .processes import ROOT, Process, clean_env, run, wait_for

EXAMPLES = ROOT / "examples"


def server_command(etcd: EtcdServer, service: str, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / "greeter_server.py"),
        "--endpoints",
        etcd.url,
        "--service",
        service,
        "--name",
        name,
        *extra,
    ]


def client_command(etcd: EtcdServer, service: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / "greeter_client.py"),
        "--endpoints",
        etcd.url,
        "--service",
        service,
        *extra,
    ]


def keys(etcd: EtcdServer, service: str) -> list[str]:
    return etcd.etcdctl("get", "--prefix", "--keys-only", f"{service}/").split()


def test_greeter_servers_and_client(etcd: EtcdServer, service: str) -> None:
    with (
        Process(server_command(etcd, service, "a", "--ttl", "5")) as a,
        Process(server_command(etcd, service, "b", "--ttl", "5")) as b,
    ):
        address_a = a.expect(rf"^a: serving on (\S+), registered as {service}/")[1]
        address_b = b.expect(rf"^b: serving on (\S+), registered as {service}/")[1]
        assert sorted(keys(etcd, service)) == sorted(
            [f"{service}/{address_a}", f"{service}/{address_b}"]
        )

        result = run(client_command(etcd, service, "--count", "6", "--interval", "0"))
        assert result.returncode == 0, result.stdout + result.stderr
        replies = result.stdout.splitlines()
        assert len(replies) == 7, result.stdout
        # Which server answers depends on which connected first; every call succeeds.
        assert replies[:6] == [f"hello call {i} from {replies[i][-1]}" for i in range(6)]
        assert {r[-1] for r in replies[:6]} <= {"a", "b"}
        assert re.fullmatch(r"6 of 6 calls succeeded \((a: \d, )?(b: \d)?\)", replies[6])

        # SIGTERM: deregister first, then stop serving; the key goes at once (lease revoked).
        a.signal(signal.SIGTERM)
        assert a.wait(15) == 0, a.stderr
        assert a.stdout_lines[-2:] == ["a: deregistered; stopping", "a: stopped"]
        assert keys(etcd, service) == [f"{service}/{address_b}"]

        result = run(client_command(etcd, service, "--count", "2", "--interval", "0"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == "2 of 2 calls succeeded (b: 2)"

        b.signal(signal.SIGINT)
        assert b.wait(15) == 0, b.stderr
    assert keys(etcd, service) == []


def test_greeter_server_stops_by_itself_after_duration(etcd: EtcdServer, service: str) -> None:
    with Process(server_command(etcd, service, "brief", "--duration", "0.5")) as server:
        server.expect(r"^brief: serving on ")
        assert server.wait(15) == 0, server.stderr
    assert server.stdout_lines[-1] == "brief: stopped"
    assert keys(etcd, service) == []


def test_greeter_client_fails_without_servers(etcd: EtcdServer, service: str) -> None:
    result = run(client_command(etcd, service, "--count", "1", "--timeout", "0.3"))
    assert result.returncode == 1
    failed, summary = result.stdout.splitlines()
    assert failed.startswith("call 0 failed: DEADLINE_EXCEEDED ")
    assert summary == "0 of 1 calls succeeded"


def test_etcdctl_interop_script(etcd: EtcdServer, service: str) -> None:
    result = run(
        [
            "bash",
            str(EXAMPLES / "etcdctl_interop.sh"),
            "--endpoints",
            etcd.url,
            "--service",
            service,
        ],
        env=clean_env(PYTHON=sys.executable, ETCDCTL=str(etcd_binary("etcdctl"))),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # etcdctl's value, listed by aiodiscovery.
    assert re.search(rf"^{service}/1\.2\.3\.4\s+1\.2\.3\.4\s+\"\.\.\.\"\s+-$", out, re.MULTILINE)
    # The lease etcdctl granted is the one aiodiscovery shows, in the same hex.
    granted = re.search(r"^lease ([0-9a-f]+) granted with TTL\(10s\)$", out, re.MULTILINE)
    assert granted is not None, out
    assert re.search(
        rf"^{service}/1\.2\.3\.4\s+1\.2\.3\.4\s+\"\.\.\.\"\s+{granted[1].rjust(16, '0')}$",
        out,
        re.MULTILINE,
    )
    # What aiodiscovery writes, etcdctl reads in the Go client's format.
    assert '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":2}}' in out
    # aiodiscovery add --ttl: the key lives under its lease, then goes when the command stops.
    registered = re.search(rf"^registered {service}/e2 .* with lease ([0-9a-f]{{16}})", out, re.M)
    assert registered is not None, out
    assert f"attached keys([{service}/e2])" in out
    assert out.rstrip().endswith(f"no endpoints under {service}/")
    wait_for(lambda: keys(etcd, service), lambda k: k == [], timeout=5)

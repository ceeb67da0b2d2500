"""Every example runs, against the session's etcd, and finishes by itself."""

from __future__ import annotations

import re
import signal
import sys
from collections import Counter

import anyio
import grpc
import grpc.aio
import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdServer, etcd_binary, free_port

from .helpers import until
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
        # Which server answers depends on which connected first (on a loaded machine one may
        # take every call); every call succeeds, in order, and the summary counts the replies.
        senders = []
        for i, reply in enumerate(replies[:6]):
            match = re.fullmatch(rf"hello call {i} from (a|b)", reply)
            assert match is not None, result.stdout
            senders.append(match[1])
        summary = re.fullmatch(r"6 of 6 calls succeeded \((.+)\)", replies[6])
        assert summary is not None, result.stdout
        counts = {name: int(n) for name, n in (part.split(": ") for part in summary[1].split(", "))}
        assert counts == Counter(senders), result.stdout
        assert sum(counts.values()) == 6 and set(counts) <= {"a", "b"}

        # SIGTERM: deregister first, drain, then stop serving; the key goes at once (revoked).
        a.signal(signal.SIGTERM)
        assert a.wait(15) == 0, a.stderr
        assert a.stdout_lines[-3:] == [
            "a: deregistered; draining for 1 s",
            "a: stopping",
            "a: stopped",
        ]
        assert keys(etcd, service) == [f"{service}/{address_b}"]

        result = run(client_command(etcd, service, "--count", "2", "--interval", "0"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == "2 of 2 calls succeeded (b: 2)"

        b.signal(signal.SIGINT)
        assert b.wait(15) == 0, b.stderr
    assert keys(etcd, service) == []


@pytest.mark.anyio
async def test_greeter_server_sigterm_drops_no_call(etcd: EtcdServer, service: str) -> None:
    # Concurrent callers while one of two servers gets SIGTERM: its drain delay covers the
    # moment until clients have seen the delete, so no call is cancelled.
    with (
        Process(server_command(etcd, service, "a", "--ttl", "5")) as a,
        Process(server_command(etcd, service, "b", "--ttl", "5")) as b,
    ):
        addresses = [
            a.expect(r"^a: serving on (\S+),")[1],
            b.expect(r"^b: serving on (\S+),")[1],
        ]
        client = await aiodiscovery.connect(etcd.url)
        try:
            channel = await aiodiscovery.resolve(client, f"etcd:///{service}")
            async with channel:

                def both_ready() -> bool:
                    subchannels = channel.statistics().subchannels
                    return all(
                        address in subchannels and subchannels[address].state == "READY"
                        for address in addresses
                    )

                await until(both_ready)
                say_hello = channel.unary_unary("/demo.Greeter/SayHello")
                replies: Counter[str] = Counter()
                failures: list[str] = []
                done = anyio.Event()

                async def caller() -> None:
                    while not done.is_set():
                        try:
                            reply: bytes = await say_hello(b"x", timeout=10)
                        except grpc.aio.AioRpcError as exc:
                            failures.append(f"{exc.code().name} {exc.details()}")
                        else:
                            replies[reply.decode().rsplit(" ", 1)[-1]] += 1

                async with anyio.create_task_group() as group:
                    for _ in range(16):
                        group.start_soon(caller)
                    # Load on both servers first, and still after a has gone.
                    await until(lambda: replies["a"] >= 20 and replies["b"] >= 20)
                    a.signal(signal.SIGTERM)
                    code = await anyio.to_thread.run_sync(a.wait, 15)
                    after_exit = replies["b"] + 100
                    await until(lambda: replies["b"] >= after_exit)
                    done.set()
        finally:
            await client.close()
    assert code == 0, a.stderr
    assert failures == []
    assert replies["a"] > 0 and replies["b"] > 0, replies


def test_examples_report_errors_in_one_line(etcd: EtcdServer, service: str) -> None:
    result = run(client_command(etcd, service, "--policy", "fastest"))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("greeter_client: error: unknown policy 'fastest'"), result.stderr

    url = f"http://127.0.0.1:{free_port()}"
    result = run([sys.executable, str(EXAMPLES / "greeter_server.py"), "--endpoints", url])
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"greeter_server: error: cannot reach etcd at {url}"), result.stderr


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
    # etcdctl's value, listed by aiodiscovery; the guide's Addr has no port, so a pool would not
    # dial it, and the listing says so.
    refused = r"\s+the address has no port$"
    row = rf"^{service}/1\.2\.3\.4\s+1\.2\.3\.4\s+\"\.\.\.\""
    assert re.search(rf"{row}\s+-{refused}", out, re.MULTILINE)
    # The lease etcdctl granted is the one aiodiscovery shows, in the same hex.
    granted = re.search(r"^lease ([0-9a-f]+) granted with TTL\(10s\)$", out, re.MULTILINE)
    assert granted is not None, out
    assert re.search(rf"{row}\s+{granted[1].rjust(16, '0')}{refused}", out, re.MULTILINE)
    # What aiodiscovery writes, etcdctl reads in the Go client's format: the weight as a string,
    # which every Go client survives.
    assert '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"weight=2"}' in out
    # aiodiscovery add --ttl: the key lives under its lease, then goes when the command stops.
    registered = re.search(rf"^registered {service}/e2 .* with lease ([0-9a-f]{{16}})", out, re.M)
    assert registered is not None, out
    assert f"attached keys([{service}/e2])" in out
    assert out.rstrip().endswith(f"no endpoints under {service}/")
    wait_for(lambda: keys(etcd, service), lambda k: k == [], timeout=5)


def test_load_reporting_example(etcd: EtcdServer, service: str) -> None:
    command = [
        sys.executable,
        str(EXAMPLES / "load_reporting.py"),
        "--endpoints",
        etcd.url,
        "--service",
        service,
    ]
    result = run(command, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    weights, shares = result.stdout.splitlines()[-2:]
    found = re.fullmatch(r"weights: fast=(\d+), slow=(\d+)", weights)
    assert found is not None, result.stdout
    # 10 ms against 30 ms per call, four workers each: the fast server weighs about 3x more.
    assert int(found[1]) > 1.5 * int(found[2]), weights
    assert re.fullmatch(r"second half: fast \d+%, slow \d+%", shares), shares
    assert keys(etcd, service) == []

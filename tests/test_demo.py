"""``aiodiscovery demo``: it runs by itself, keeps its promises, honours its options, and
leaves nothing behind."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aiodiscovery.testing import EtcdServer

from .cli_support import printable, read_until_then_close
from .processes import ROOT, Process, clean_env, cli_command, run, run_cli


def assert_closed(address: str) -> None:
    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 2):
        pass


def demo_addresses(output: str) -> list[str]:
    etcd = re.search(r"etcd at http://(\S+);", output)
    assert etcd is not None, output
    return [etcd[1], *re.findall(r"serving on (\S+),", output)]


def test_demo_runs_by_itself_and_cleans_up() -> None:
    result = run_cli("demo", "--phase-seconds", "1", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for phase in (
        "== 1. steady",
        "== 2. graceful stop of s1",
        "== 3. crash of s2",
        "== 4. scale out",
        "== summary ==",
    ):
        assert phase in out
    assert "client: dropped s1" in out
    assert "s2's lease expired" in out
    assert "client: picked up s4" in out
    assert "demo OK" in out
    summary = out.split("== summary ==")[1]
    phases = {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"^\s+(\d)\. .+?\s{2,}(\d+)\s+(\d+)\s", summary, re.MULTILINE)
    }
    assert sorted(phases) == ["1", "2", "3", "4"], out
    # Calls in every phase; none failed on the graceful path, before the crash, or after it.
    assert all(calls > 0 for calls, _ in phases.values()), out
    assert phases["1"][1] == phases["2"][1] == phases["4"][1] == 0, out
    # Per-second lines are plain text, readable without a terminal.
    assert re.search(r"^\s+\d+s\s+calls/s: ", out, re.MULTILINE)
    # Nothing is left behind: etcd and every server are gone.
    addresses = demo_addresses(out)
    assert len(addresses) == 5
    for address in addresses:
        assert_closed(address)


def test_demo_interrupted_cleans_up_and_exits_130() -> None:
    with Process(cli_command("demo", "--phase-seconds", "30")) as demo:
        demo.expect(r"^== 1\. steady", timeout=60)
        demo.signal(signal.SIGINT)
        assert demo.wait(20) == 130, demo.stderr
    assert "interrupted" in demo.stdout
    addresses = demo_addresses(demo.stdout)
    assert len(addresses) == 4
    for address in addresses:
        assert_closed(address)


@pytest.fixture(scope="module")
def read_only_etcd() -> Iterator[EtcdServer]:
    """An etcd where user ``viewer`` may read ``demo/`` but not write it."""
    with EtcdServer() as server:
        server.enable_auth(password="secret")
        server.etcdctl("role", "add", "reader")
        server.etcdctl("role", "grant-permission", "reader", "read", "demo/", "--prefix=true")
        server.etcdctl("user", "add", "viewer:pw")
        server.etcdctl("user", "grant-role", "viewer", "reader")
        yield server


def test_demo_servers_that_cannot_register_fail_in_one_line(read_only_etcd: EtcdServer) -> None:
    # The demo connects (reading is allowed), but its servers' Registrars cannot write.
    args = ("demo", "--endpoints", read_only_etcd.url, "--user", "viewer", "--service", "demo/ro")
    result = run(cli_command(*args), env=clean_env(ETCDCTL_PASSWORD="pw"), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    # The password travels over plaintext http here: said once, as a warning line.
    warned = [line for line in lines if line.startswith("aiodiscovery: warning: ")]
    assert len(warned) == 1 and "plaintext" in warned[0], lines
    [line] = [line for line in lines if line not in warned]
    assert re.fullmatch(r"aiodiscovery: error: demo server s\d failed: .*permission denied", line)


def test_demo_fails_when_a_stranger_takes_calls(etcd: EtcdServer, service: str) -> None:
    # Someone else's server registered under the demo's service takes phase 1 calls: the script
    # runs on, and the summary and one "demo FAILED" line say what went wrong. The name in its
    # replies is the stranger's to choose: it reaches the terminal escaped.
    stranger = [
        sys.executable,
        str(ROOT / "examples" / "greeter_server.py"),
        "--endpoints",
        etcd.url,
        "--service",
        service,
        "--name",
        "str\x1b[1manger",
    ]
    with Process(stranger) as server:
        server.expect(r"^str.*: serving on ")
        args = ("demo", "--endpoints", etcd.url, "--service", service, "--phase-seconds", "1")
        result = run_cli(*args, timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "== summary ==" in result.stdout
    failed = result.stdout.splitlines()[-1]
    assert failed.startswith(
        "demo FAILED: phase 1 reached s1, s2, s3, str\\x1b[1manger, not s1, s2 and s3"
    )
    assert printable(result.stdout)
    assert result.stderr == ""


def test_demo_into_a_closed_pipe_exits_141_quietly() -> None:
    # `aiodiscovery demo | head`: the next line written hits the closed pipe.
    with subprocess.Popen(
        cli_command("demo", "--phase-seconds", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as demo:
        try:
            lines = read_until_then_close(demo, "== 1. steady")
            _, stderr = demo.communicate(timeout=30)
        finally:
            demo.kill()
    assert demo.returncode == 141, stderr
    assert stderr == ""
    addresses = demo_addresses("".join(lines))
    assert len(addresses) == 4
    for address in addresses:
        assert_closed(address)

"""``aiodiscovery demo``: it runs by itself, keeps its promises, honours its options, and
leaves nothing behind."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiodiscovery.testing import EtcdServer

from .cli_support import into_closed_pipe, printable, tls_args
from .processes import ROOT, Process, clean_env, cli_command, run, run_cli


def assert_closed(address: str) -> None:
    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 2):
        pass


def demo_addresses(output: str) -> list[str]:
    etcd = re.search(r"etcd at https?://(\S+);", output)
    assert etcd is not None, output
    return [etcd[1], *re.findall(r"serving on (\S+),", output)]


@dataclass
class Summary:
    """What the demo's summary says."""

    phases: dict[str, tuple[float, int, int]]  # phase number -> (seconds, calls, failed)
    in_flight: int  # calls in flight on s2 when it died
    late: int  # calls sent to s2 after, before the client saw it die
    callers: int  # callers that got replies
    made: int  # calls made
    seconds: float  # how long the callers called


def summary_of(output: str) -> Summary:
    summary = output.split("== summary ==")[1]
    phases = {
        m[1]: (float(m[2]), int(m[3]), int(m[4]))
        for m in re.finditer(
            r"^\s+(\d)\. .+?\s{2,}(\d+\.\d+)\s+(\d+)\s+(\d+)\s", summary, re.MULTILINE
        )
    }
    assert sorted(phases) == ["1", "2", "3", "4"], output
    crash = re.search(
        r"^  phase 3: (\d+) failed; sent to s2: (\d+) in flight when it died, (\d+) before",
        summary,
        re.MULTILINE,
    )
    assert crash is not None, output
    assert int(crash[1]) == phases["3"][2]
    made = re.search(r"^  (\d+) callers got replies; (\d+) calls in (\d+\.\d+) s", summary, re.M)
    assert made is not None, output
    return Summary(phases, int(crash[2]), int(crash[3]), int(made[1]), int(made[2]), float(made[3]))


def assert_promises_kept(output: str, callers: int, rate: float) -> Summary:
    """The README's promises for the demo, with the bounds that follow from them."""
    summary = summary_of(output)
    # Calls in every phase; none failed on the graceful path, before the crash, or after it.
    assert all(calls > 0 for _, calls, _ in summary.phases.values()), output
    assert summary.phases["1"][2] == summary.phases["2"][2] == summary.phases["4"][2] == 0, output
    # The crash fails only calls sent to s2: those in flight when it died (one per caller at
    # most: a caller waits for its call) and those sent before the client saw it die.
    assert summary.in_flight <= callers, output
    assert summary.phases["3"][2] <= summary.in_flight + summary.late, output
    # Each caller starts its k-th call no sooner than k / rate seconds after the first.
    assert summary.made <= callers * (rate * (summary.seconds + 0.01) + 1), output
    assert summary.callers == callers, output
    assert "demo OK" in output
    return summary


def test_demo_runs_by_itself_and_cleans_up() -> None:
    # Without --endpoints the demo reads no connection variable: these would fail it.
    nowhere = {"ETCDCTL_ENDPOINTS": "http://127.0.0.1:1", "ETCD_ENDPOINTS": "http://127.0.0.1:1"}
    env = clean_env(**nowhere, ETCDCTL_USER="root", ETCDCTL_CACERT="/nonexistent")
    result = run(cli_command("demo", "--phase-seconds", "1"), env=env, timeout=90)
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
    assert "etcd at http://127.0.0.1:" in out
    assert "4 callers at 20 calls/s each" in out
    assert_promises_kept(out, callers=4, rate=20)
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
        # Before auth is on: each etcdctl call after it costs a bcrypt on etcd, slow under load.
        server.etcdctl("role", "add", "reader")
        server.etcdctl("role", "grant-permission", "reader", "read", "demo/", "--prefix=true")
        server.etcdctl("user", "add", "viewer:pw")
        server.etcdctl("user", "grant-role", "viewer", "reader")
        server.enable_auth(password="secret")
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
    code, lines, stderr = into_closed_pipe(["demo", "--phase-seconds", "30"], "== 1. steady")
    assert code == 141, stderr
    assert stderr == ""
    addresses = demo_addresses("".join(lines))
    assert len(addresses) == 4
    for address in addresses:
        assert_closed(address)


# -- the options, against a TLS etcd with authentication ---------------------------------------

PASSWORD = "demo-Pw-7x"


@pytest.fixture(scope="module")
def secure_etcd() -> Iterator[EtcdServer]:
    """TLS with client certificates and etcd authentication (root / PASSWORD)."""
    with EtcdServer(client_cert_auth=True) as server:
        server.enable_auth(password=PASSWORD)
        yield server


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # The command name, in parentheses, may hold spaces: the fields follow the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_demo_options_against_tls_etcd_with_auth(secure_etcd: EtcdServer) -> None:
    # One short run proves every option: each assertion below fails if its option is dropped.
    service = "demo/options"
    args = (
        *("demo", *tls_args(secure_etcd), "--user", "root", "--service", service),
        *("--phase-seconds", "1", "--callers", "2", "--rate", "8", "--ttl", "3"),
    )
    with Process(cli_command(*args), env=clean_env(ETCDCTL_PASSWORD=PASSWORD)) as demo:
        registered = {}
        for _ in range(3):
            match = demo.expect(r"^  (s\d): serving on (\S+), registered as (\S+)$", timeout=60)
            registered[match[1]] = match[3]
        # The servers got their settings, password included, through a pipe: not on their
        # command line, nor in their environment.
        servers = children(demo.popen.pid)
        assert len(servers) >= 3, servers
        for pid in [demo.popen.pid, *servers]:
            with contextlib.suppress(FileNotFoundError):
                assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
                if pid != demo.popen.pid:
                    assert PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        # --service, --endpoints, --cacert, --cert, --key and --user: the servers registered in
        # this etcd, under the service; --ttl: under leases of 3 s; metadata as a string.
        assert sorted(registered) == ["s1", "s2", "s3"]
        assert all(key.startswith(f"{service}/") for key in registered.values()), registered
        reply = json.loads(secure_etcd.etcdctl("get", registered["s3"], "-w", "json"))
        [kv] = reply["kvs"]
        assert json.loads(base64.b64decode(kv["value"]))["Metadata"] == "server=s3"
        lease = f"{int(kv['lease']):x}"
        assert "granted with TTL(3s)" in secure_etcd.etcdctl("lease", "timetolive", lease)
        assert demo.wait(90) == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert f"etcd at {secure_etcd.url}; service '{service}'" in out
    assert "2 callers at 8 calls/s each" in out
    assert "lease TTL 3 s" in out
    # --callers and --rate: two callers called, at no more than 8 calls/s each; --phase-seconds:
    # the steady phase lasted 1 s, not the default 3.
    summary = assert_promises_kept(out, callers=2, rate=8)
    assert 1.0 <= summary.phases["1"][0] < 3.0, out
    # A loaded machine may make a client change members: a warning, in the demo's own format.
    assert all(line.startswith("aiodiscovery: warning: ") for line in demo.stderr_lines), (
        demo.stderr
    )
    assert PASSWORD not in out + demo.stderr
    for address in demo_addresses(out)[1:]:
        assert_closed(address)

"""The ``aiodiscovery`` command line, run as a real subprocess against a real etcd."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from aiodiscovery.testing import EtcdServer

from .cli_support import into_closed_pipe, one_error_line, printable, unreachable
from .processes import Process, clean_env, cli_command, run, run_cli

SEED = '{"Addr":"1.2.3.4","Metadata":"..."}'


def lease_of(etcd: EtcdServer, key: str) -> int:
    reply = json.loads(etcd.etcdctl("get", key, "-w", "json"))
    return int(reply["kvs"][0].get("lease", 0)) if reply.get("kvs") else 0


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("list", "watch", "add", "del", "demo"):
        assert command in result.stdout
    for option in ("--endpoints", "--dial-timeout", "--cacert", "--cert", "--key", "--user"):
        assert option in result.stdout


def test_list_shows_a_table_and_json(etcd: EtcdServer, service: str) -> None:
    lease_hex = etcd.etcdctl("lease", "grant", "60").split()[1]
    etcd.etcdctl("put", f"{service}/1.2.3.4", SEED)
    etcd.etcdctl("put", f"--lease={lease_hex}", f"{service}/e2", '{"Addr":"10.0.0.2:50051"}')
    etcd.etcdctl("put", f"{service}/broken", "not json")

    result = run_cli("--endpoints", etcd.url, "list", service)
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 4) for line in result.stdout.splitlines()]
    # The seed document's Addr has no port: a pool would not dial it, and the listing says so.
    assert rows == [
        ["KEY", "ADDRESS", "METADATA", "LEASE", "REFUSED"],
        [f"{service}/1.2.3.4", "1.2.3.4", '"..."', "-", "the address has no port"],
        [f"{service}/e2", "10.0.0.2:50051", "-", lease_hex.rjust(16, "0"), "-"],
    ]
    # The bad value is named on stderr, once, and skipped.
    assert result.stderr.count(f"{service}/broken") == 1
    assert result.stderr.startswith("aiodiscovery: warning: ")

    # --endpoints may also follow the command, and the etcd:/// form names the same service.
    result = run_cli("list", f"etcd:///{service}", "--json", "--endpoints", etcd.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "key": f"{service}/1.2.3.4",
            "addr": "1.2.3.4",
            "metadata": "...",
            "lease": None,
            "refused": "the address has no port",
        },
        {
            "key": f"{service}/e2",
            "addr": "10.0.0.2:50051",
            "metadata": None,
            "lease": lease_hex.rjust(16, "0"),
            "refused": None,
        },
    ]


def test_list_marks_what_a_pool_would_not_dial(etcd: EtcdServer, service: str) -> None:
    for name, addr in [("bind", "0.0.0.0:50051"), ("meta", "169.254.169.254:80")]:
        etcd.etcdctl("put", f"{service}/{name}", json.dumps({"Addr": addr}))
    etcd.etcdctl("put", f"{service}/ok", '{"Addr":"10.0.0.2:50051"}')
    result = run_cli("--endpoints", etcd.url, "list", service)
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 4) for line in result.stdout.splitlines()]
    assert rows[0] == ["KEY", "ADDRESS", "METADATA", "LEASE", "REFUSED"]
    assert "unspecified address" in rows[1][4] and "link-local" in rows[2][4]
    assert rows[3] == [f"{service}/ok", "10.0.0.2:50051", "-", "-", "-"]
    as_json = json.loads(run_cli("--endpoints", etcd.url, "list", service, "--json").stdout)
    assert [bool(entry["refused"]) for entry in as_json] == [True, True, False]
    # Nothing refused: the table keeps its four columns.
    for name in ("bind", "meta"):
        etcd.etcdctl("del", f"{service}/{name}")
    lines = run_cli("--endpoints", etcd.url, "list", service).stdout.splitlines()
    assert lines[0].split() == ["KEY", "ADDRESS", "METADATA", "LEASE"]


def test_list_empty_and_endpoints_from_the_environment(etcd: EtcdServer, service: str) -> None:
    result = run(cli_command("list", service), env=clean_env(ETCD_ENDPOINTS=etcd.url))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no endpoints under {service}/\n"
    result = run(cli_command("list", service, "--json"), env=clean_env(ETCD_ENDPOINTS=etcd.url))
    assert json.loads(result.stdout) == []


def test_add_and_del(etcd: EtcdServer, service: str) -> None:
    key = f"{service}/e1"
    result = run_cli(
        "--endpoints", etcd.url, "add", key, "10.0.0.1:50051", "--metadata", '{"w": 2, "a": "<"}'
    )
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr
    # Go's format, byte for byte, and no lease.
    assert etcd.etcdctl("get", key).splitlines() == [
        key,
        '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"a":"\\u003c","w":2}}',
    ]
    assert lease_of(etcd, key) == 0

    result = run_cli("--endpoints", etcd.url, "del", key)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert etcd.etcdctl("get", "--prefix", f"{service}/") == ""
    # Deleting a missing key is not an error (as with etcdctl del): 0 keys deleted.
    result = run_cli("--endpoints", etcd.url, "del", key)
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr


def test_add_weight_and_zone_as_a_string_go_clients_survive(etcd: EtcdServer, service: str) -> None:
    # Attributes in URL query form, names sorted, in a JSON string: an object here would crash
    # grpc-go's balancers (etcd-io/etcd#19700).
    key = f"{service}/e1"
    args = ("--endpoints", etcd.url, "add", key, "10.0.0.1:50051")
    result = run_cli(*args, "--zone", "eu west/1", "--weight", "2")
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr
    assert etcd.etcdctl("get", key, "--print-value-only").strip() == (
        '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"weight=2\\u0026zone=eu+west%2F1"}'
    )
    result = run_cli(*args, "--weight", "4294967295")
    assert result.returncode == 0, result.stderr
    listing = run_cli("--endpoints", etcd.url, "list", service)
    assert listing.stdout.splitlines()[1].split() == [
        key,
        "10.0.0.1:50051",
        '"weight=4294967295"',
        "-",
    ]
    for bad in (["--weight", "0"], ["--weight", "4294967296"], ["--weight", "2.5"]):
        result = run_cli(*args, *bad)
        assert result.returncode == 2 and "--weight" in result.stderr, result.stderr
    for bad, message in (
        (["--weight", "2", "--metadata", "{}"], "give --metadata or --weight/--zone, not both"),
        (["--zone", ""], "--zone must not be empty"),
    ):
        result = run_cli(*args, *bad)
        assert result.returncode == 2
        assert message in one_error_line(result)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_add_with_ttl_keeps_the_lease_until_a_signal(
    etcd: EtcdServer, service: str, signum: int, code: int
) -> None:
    key = f"{service}/leased"
    command = cli_command(
        "add", key, "10.0.0.3:50051", "--ttl", "30", "--endpoints", etcd.url, "--metadata", "7"
    )
    with Process(command) as adder:
        match = adder.expect(r"^registered .* with lease ([0-9a-f]{16}) \(TTL (\d+) s\)")
        lease_hex, ttl = match[1], int(match[2])
        assert ttl == 30
        # The key is written (the line comes after the put) under the lease it names.
        assert etcd.etcdctl("get", key, "--print-value-only").strip() == (
            '{"Op":0,"Addr":"10.0.0.3:50051","Metadata":7}'
        )
        assert lease_of(etcd, key) == int(lease_hex, 16)
        assert key in etcd.etcdctl("lease", "timetolive", lease_hex, "--keys")

        adder.signal(signum)
        assert adder.wait(15) == code, adder.stderr
    assert f"stopping: revoking lease {lease_hex}" in adder.stdout
    # The Registrar's own word that the revoke went through.
    assert adder.stderr_lines == [
        f"aiodiscovery: info: unregistered {key} (lease {int(lease_hex, 16):x} revoked)"
    ]
    # Revoked, not left to expire: the key is gone at once and so is the lease.
    assert etcd.etcdctl("get", key) == ""
    assert "already expired" in etcd.etcdctl("lease", "timetolive", lease_hex)


def test_watch_prints_each_change(etcd: EtcdServer, service: str) -> None:
    etcd.etcdctl("put", f"{service}/before", SEED)
    with Process(cli_command("--endpoints", etcd.url, "watch", service)) as watcher:
        header = watcher.readline()
        assert re.fullmatch(
            rf"# revision \d+: 1 endpoints under {service}/; watching for changes.*", header
        )
        assert watcher.readline().split() == [
            "ADD",
            f"{service}/before",
            "1.2.3.4",
            '"..."',
            "lease=-",
        ]

        etcd.etcdctl("put", f"{service}/new", '{"Addr":"10.0.0.9:1","Metadata":{"z":1}}')
        assert re.fullmatch(r"# revision \d+", watcher.readline())
        assert watcher.readline().split() == [
            "ADD",
            f"{service}/new",
            "10.0.0.9:1",
            '{"z":1}',
            "lease=-",
        ]
        etcd.etcdctl("del", f"{service}/before")
        assert re.fullmatch(r"# revision \d+", watcher.readline())
        assert watcher.readline() == f"DELETE {service}/before"

        watcher.signal(signal.SIGTERM)
        assert watcher.wait(15) == 143, watcher.stderr
    assert watcher.stderr == ""


def test_watch_json_lines(etcd: EtcdServer, service: str) -> None:
    with Process(cli_command("watch", service, "--json", "--endpoints", etcd.url)) as watcher:
        first = json.loads(watcher.readline())
        assert first["initial"] is True
        assert first["updates"] == []
        lease_hex = etcd.etcdctl("lease", "grant", "60").split()[1]
        etcd.etcdctl("put", f"--lease={lease_hex}", f"{service}/a", SEED)
        added = json.loads(watcher.readline())
        assert added["revision"] > first["revision"]
        assert (added["initial"], added["relist"]) == (False, False)
        assert added["updates"] == [
            {
                "op": "add",
                "key": f"{service}/a",
                "addr": "1.2.3.4",
                "metadata": "...",
                "lease": lease_hex.rjust(16, "0"),
            }
        ]
        # Revoking the lease deletes the key: a delete event.
        etcd.etcdctl("lease", "revoke", lease_hex)
        deleted = json.loads(watcher.readline())
        assert deleted["updates"] == [{"op": "delete", "key": f"{service}/a"}]

        watcher.signal(signal.SIGINT)
        assert watcher.wait(15) == 130, watcher.stderr


# -- untrusted text ----------------------------------------------------------------------------


# An escape sequence, a C1 control (CSI) and DEL: what a writer to etcd could aim at a terminal.
NASTY = "e\x1b[2J\x9b1m\x7f"


def test_registry_text_reaches_no_terminal_raw(etcd: EtcdServer, service: str) -> None:
    key = f"{service}/{NASTY}"
    metadata = f"m\x1b]0;title\x07\x85{NASTY}"
    etcd.etcdctl("put", key, json.dumps({"Addr": "10.0.0.1:1", "Metadata": metadata}))

    table = run_cli("--endpoints", etcd.url, "list", service)
    assert table.returncode == 0, table.stderr
    assert printable(table.stdout) and printable(table.stderr), table.stdout
    assert f"{service}/e\\x1b[2J\\x9b1m\\x7f" in table.stdout
    as_json = run_cli("--endpoints", etcd.url, "list", service, "--json")
    assert printable(as_json.stdout), as_json.stdout
    # Escaped, not lost: the JSON holds the very key and metadata.
    [entry] = json.loads(as_json.stdout)
    assert (entry["key"], entry["metadata"]) == (key, metadata)

    for extra in ([], ["--json"]):
        with Process(cli_command("--endpoints", etcd.url, "watch", service, *extra)) as watcher:
            lines = [watcher.readline()]
            if not extra:
                lines.append(watcher.readline())
            watcher.signal(signal.SIGTERM)
            assert watcher.wait(15) == 143, watcher.stderr
        assert all(printable(line) for line in lines), lines
        if extra:
            [update] = json.loads(lines[0])["updates"]
            assert (update["key"], update["metadata"]) == (key, metadata)


def test_add_ttl_prints_its_key_escaped(etcd: EtcdServer, service: str) -> None:
    key = f"{service}/{NASTY}"
    with Process(
        cli_command("--endpoints", etcd.url, "add", key, "10.0.0.4:1", "--ttl", "30")
    ) as adder:
        adder.expect(r"^registered ")
        adder.signal(signal.SIGTERM)
        assert adder.wait(15) == 143, adder.stderr
    assert printable(adder.stdout) and printable(adder.stderr), adder.stdout + adder.stderr
    assert "registered " in adder.stdout and "stopping: " in adder.stdout
    assert "unregistered " in adder.stderr


# -- errors ------------------------------------------------------------------------------------


def test_unreachable_etcd_is_one_line_and_exit_1() -> None:
    url = unreachable()
    started = time.monotonic()
    result = run_cli("--endpoints", url, "--dial-timeout", "500ms", "list", "foo/bar")
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"cannot reach etcd at {url}" in line
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "etcd://somehost/foo"], "authority"),
        (["list", "foo/bar/"], "ends with '/'"),
        (["watch", "http:///foo"], "scheme"),
        (["add", "no-service", "1.2.3.4:1"], "must look like <service>/<id>"),
        (["add", "foo/", "1.2.3.4:1"], "must look like <service>/<id>"),
        (["add", "foo/e1", "1.2.3.4:1", "--metadata", "{bad"], "--metadata is not valid JSON"),
        (["add", "foo/e1", "1.2.3.4:1", "--metadata", "NaN"], "--metadata is not valid JSON"),
        (["add", "foo/e1", ""], "non-empty"),
        (["del", "etcd:///foo/e1"], "not under its service prefix"),
        (["--user", "root", "list", "foo"], "stdin is not a terminal"),
        (["--cacert", "/nonexistent/ca.pem", "list", "foo"], "TLS options (--cacert) need https"),
        (["--cert", "c.pem", "list", "foo"], "--cert was given without --key"),
        (["--endpoints", "ftp://x:1", "list", "foo"], "must use http:// or https://"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    # Validation comes before dialling: an unreachable etcd does not turn these into exit 1.
    result = run_cli("--endpoints", unreachable(), *args)
    assert result.returncode == 2, result.stderr
    assert message in one_error_line(result)


def test_unreadable_certificate_is_a_usage_error() -> None:
    url = unreachable().replace("http://", "https://")
    result = run_cli("--endpoints", url, "--cacert", "/nonexistent/ca.pem", "list", "foo")
    assert result.returncode == 2
    assert "/nonexistent/ca.pem" in one_error_line(result)


def test_argparse_errors_exit_2() -> None:
    assert run_cli("bogus").returncode == 2
    assert run_cli("list").returncode == 2
    assert run_cli("add", "foo/e1", "1.2.3.4:1", "--ttl", "0").returncode == 2
    assert run_cli("--dial-timeout", "soon", "list", "foo").returncode == 2


def test_watch_into_a_closed_pipe_exits_141_quietly(etcd: EtcdServer, service: str) -> None:
    code, _, stderr = into_closed_pipe(
        ["--endpoints", etcd.url, "watch", service],
        "watching for changes",
        then=lambda: etcd.etcdctl("put", f"{service}/e1", SEED),
    )
    assert code == 141, stderr
    assert stderr == ""


def test_one_deep_value_costs_only_its_own_line(etcd: EtcdServer, service: str) -> None:
    # Go reads metadata nested up to 10,000 deep. 700 levels (past the depth where the library's
    # iterative encoder takes over) fit the default metadata budget and print; 1,500 levels hold
    # 132 KB in Python for 3 KB stored: skipped with the reason, the listing goes on without it.
    printed = "[" * 700 + "]" * 700
    deep = "[" * 1500 + "]" * 1500
    etcd.etcdctl("put", f"{service}/deep", '{"Addr":"127.0.0.1:1","Metadata":' + deep + "}")
    etcd.etcdctl("put", f"{service}/nested", '{"Addr":"127.0.0.1:3","Metadata":' + printed + "}")
    etcd.etcdctl("put", f"{service}/plain", '{"Addr":"127.0.0.1:2","Metadata":"zone=a"}')
    listed = run_cli("--endpoints", etcd.url, "list", service, "--json")
    assert listed.returncode == 0, listed.stderr
    # Compared as text, whitespace aside: the listing is indented.
    assert listed.stdout.count('"addr"') == 2 and printed in "".join(listed.stdout.split())
    assert '"metadata": "zone=a"' in listed.stdout
    assert f"{service}/deep" in listed.stderr and "too big to hold" in listed.stderr
    table = run_cli("--endpoints", etcd.url, "list", service)
    assert table.returncode == 0, table.stderr
    assert "127.0.0.1:3" in table.stdout and "zone=a" in table.stdout


def test_too_deep_metadata_on_the_command_line_is_a_usage_error(etcd: EtcdServer) -> None:
    # Deeper than Go's encoding/json reads (10,000 levels), so too deep on every Python: how deep
    # CPython's json reads depends on its version (3.11: under 1,000; 3.13: just under 10,000).
    deep = "[" * 20_000 + "]" * 20_000
    result = run_cli(
        "--endpoints", etcd.url, "add", "deep/svc/e1", "127.0.0.1:1", "--metadata", deep
    )
    assert result.returncode == 2
    assert one_error_line(result).endswith(
        "nested too deeply to be read here (use etcdctl put for such values)"
    )

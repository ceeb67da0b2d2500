"""The command line against TLS and authenticated etcd: every way in for the password, the
etcdctl variables and their precedence, --server-name, and no secret in any output."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import aiodiscovery
from aiodiscovery.testing import EtcdServer, TLSFiles

from .cli_support import one_error_line, tls_args, unreachable
from .processes import ROOT, clean_env, cli_command, run_cli

PASSWORD = "s3cret-Pw"
SEED = '{"Addr":"1.2.3.4","Metadata":"..."}'
ARGV_WARNING = "aiodiscovery: warning: a password on the command line is visible"
# etcd's simple tokens: 16 random letters, a dot and a counter (etcd/server/auth/simple_token.go).
SIMPLE_TOKEN = re.compile(r"[A-Za-z]{16}\.\d+")


@pytest.fixture(scope="module")
def secure_etcd() -> Iterator[EtcdServer]:
    """TLS with client certificates and etcd authentication (root / PASSWORD)."""
    with EtcdServer(client_cert_auth=True) as server:
        server.enable_auth(password=PASSWORD)
        server.etcdctl("put", "secure/svc/e1", SEED)
        yield server


def cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the command line with extra environment variables and, if given, text on stdin."""
    return subprocess.run(
        cli_command(*args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(**env),
        cwd=ROOT,
        check=False,
    )


def listed(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [entry["key"] for entry in json.loads(result.stdout)]


def key_body(path: Path) -> list[str]:
    """The base64 lines of a PEM key, and the key's DER bytes in one base64 run."""
    lines = [
        line for line in path.read_text().splitlines() if line and not line.startswith("-----")
    ]
    return [*lines, base64.b64encode(base64.b64decode("".join(lines))).decode()]


def assert_no_secret(text: str, etcd: EtcdServer, *passwords: str) -> None:
    for password in (PASSWORD, *passwords):
        assert password not in text
    assert SIMPLE_TOKEN.search(text) is None, text
    assert "PRIVATE KEY" not in text
    for line in key_body(etcd.client_key_path):
        assert line not in text


# -- where the password comes from ---------------------------------------------------------


def test_tls_and_user_options_reach_connect(secure_etcd: EtcdServer, tmp_path: Path) -> None:
    # No password on the command line at all: ETCDCTL_PASSWORD, a file, a pipe.
    args = (*tls_args(secure_etcd), "--user", "root", "list", "secure/svc", "--json")
    for result in (
        cli(*args, ETCDCTL_PASSWORD=PASSWORD),
        cli(*args, "--password-stdin", stdin=f"{PASSWORD}\n"),
        cli(*args, "--password-file", str(write(tmp_path / "pw", f"{PASSWORD}\r\n"))),
    ):
        assert listed(result) == ["secure/svc/e1"]
        assert result.stderr == ""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_every_connection_setting_from_etcdctl_variables(secure_etcd: EtcdServer) -> None:
    env = {
        "ETCDCTL_ENDPOINTS": secure_etcd.url,
        "ETCDCTL_CACERT": str(secure_etcd.ca_path),
        "ETCDCTL_CERT": str(secure_etcd.client_cert_path),
        "ETCDCTL_KEY": str(secure_etcd.client_key_path),
        "ETCDCTL_DIAL_TIMEOUT": "3s",
    }
    # The user as etcdctl reads it: "name:password" in ETCDCTL_USER, or the name beside
    # ETCDCTL_PASSWORD.
    assert listed(cli("list", "secure/svc", "--json", **env, ETCDCTL_USER=f"root:{PASSWORD}")) == [
        "secure/svc/e1"
    ]
    result = cli(
        "list", "secure/svc", "--json", **env, ETCDCTL_USER="root", ETCDCTL_PASSWORD=PASSWORD
    )
    assert listed(result) == ["secure/svc/e1"]
    assert result.stderr == ""


def test_options_beat_variables(secure_etcd: EtcdServer) -> None:
    good = {
        "ETCDCTL_CACERT": str(secure_etcd.ca_path),
        "ETCDCTL_CERT": str(secure_etcd.client_cert_path),
        "ETCDCTL_KEY": str(secure_etcd.client_key_path),
        "ETCDCTL_PASSWORD": PASSWORD,
    }
    # --endpoints beats ETCDCTL_ENDPOINTS, which beats ETCD_ENDPOINTS.
    nowhere = unreachable().replace("http", "https")
    result = cli(
        "--endpoints", secure_etcd.url, "--dial-timeout", "3s", "--user", "root",
        "list", "secure/svc", "--json",
        **good, ETCDCTL_ENDPOINTS=nowhere, ETCD_ENDPOINTS=nowhere,
    )  # fmt: skip
    assert listed(result) == ["secure/svc/e1"]
    result = cli(
        "--user", "root", "list", "secure/svc", "--json",
        **good, ETCDCTL_ENDPOINTS=secure_etcd.url, ETCD_ENDPOINTS=nowhere,
    )  # fmt: skip
    assert listed(result) == ["secure/svc/e1"]
    # --user beats ETCDCTL_USER, password and all: a stray ETCDCTL_USER changes nothing.
    result = cli(
        *tls_args(secure_etcd), "--user", "root", "list", "secure/svc", "--json",
        ETCDCTL_USER="mallory:guess", ETCDCTL_PASSWORD=PASSWORD,
    )  # fmt: skip
    assert listed(result) == ["secure/svc/e1"]
    # --dial-timeout beats ETCDCTL_DIAL_TIMEOUT: a bad variable is never read.
    result = cli(
        "--endpoints", unreachable(), "--dial-timeout", "300ms", "list", "svc",
        ETCDCTL_DIAL_TIMEOUT="soon",
    )  # fmt: skip
    assert "cannot reach etcd" in one_error_line(result)
    # ETCDCTL_DIAL_TIMEOUT is read when no option says otherwise.
    started = time.monotonic()
    result = cli("--endpoints", unreachable(), "list", "svc", ETCDCTL_DIAL_TIMEOUT="300ms")
    assert "within 0.3 s" in one_error_line(result)
    assert time.monotonic() - started < 15


def test_a_password_in_argv_works_with_one_warning(secure_etcd: EtcdServer) -> None:
    for user in (["--user", f"root:{PASSWORD}"], ["--user", "root", "--password", PASSWORD]):
        result = run_cli(*tls_args(secure_etcd), *user, "list", "secure/svc", "--json")
        assert listed(result) == ["secure/svc/e1"]
        [warning] = result.stderr.splitlines()
        assert warning.startswith(ARGV_WARNING), warning
        assert "ETCDCTL_PASSWORD, --password-file or --password-stdin" in warning
        assert PASSWORD not in warning


# Never a real password here: each case checks that its error line does not repeat it.
SECRET = "Zq9-not-shown"


@pytest.mark.parametrize(
    ("args", "env", "stdin", "message"),
    [
        (["--user", "root", "--password-stdin", "--password", SECRET], {}, SECRET,
         "give the password once, not with --password and --password-stdin"),
        (["--user", f"root:{SECRET}", "--password", SECRET], {}, None,
         "give the password once, not with --user NAME:PASSWORD and --password"),
        (["--user", "root", "--password-file", "/nonexistent/pw"], {}, None,
         "--password-file /nonexistent/pw: No such file or directory"),
        (["--user", "root", "--password-stdin"], {}, "\n",
         "--password-stdin: the password is empty"),
        (["--password-stdin"], {}, SECRET, "--password-stdin needs --user (or $ETCDCTL_USER)"),
        (["--password", SECRET], {}, None, "--password needs --user (or $ETCDCTL_USER)"),
        ([], {"ETCDCTL_USER": f"root:{SECRET}", "ETCDCTL_PASSWORD": SECRET}, None,
         "$ETCDCTL_USER holds a password and $ETCDCTL_PASSWORD another"),
        ([], {"ETCDCTL_USER": f":{SECRET}"}, None,
         "$ETCDCTL_USER: the etcd user name must not be empty"),
        (["--user", "root"], {}, None, "stdin is not a terminal to ask for it; use "
         "$ETCDCTL_PASSWORD, --password-file or --password-stdin"),
        ([], {"ETCDCTL_DIAL_TIMEOUT": "soon"}, None,
         "$ETCDCTL_DIAL_TIMEOUT: 'soon' is not a duration"),
    ],
)  # fmt: skip
def test_password_usage_errors(
    args: list[str], env: dict[str, str], stdin: str | None, message: str
) -> None:
    result = cli("--endpoints", unreachable(), *args, "list", "svc", stdin=stdin, **env)
    assert result.returncode == 2, result.stderr
    assert message in one_error_line(result)
    assert SECRET not in result.stderr


def test_refused_credentials_exit_1_and_name_no_password(
    secure_etcd: EtcdServer, tmp_path: Path
) -> None:
    wrong = "hunter2-wrong"
    for result in (
        cli(*tls_args(secure_etcd), "--user", "root", "list", "svc", ETCDCTL_PASSWORD=wrong),
        cli(
            *tls_args(secure_etcd), "--user", "root", "--password-stdin", "list", "svc", stdin=wrong
        ),
        cli(*tls_args(secure_etcd), "--user", f"root:{wrong}", "list", "svc"),
    ):
        assert result.returncode == 1
        assert "etcd rejected the credentials of user 'root'" in result.stderr
        assert_no_secret(result.stderr, secure_etcd, wrong)


def test_password_is_asked_on_a_terminal(secure_etcd: EtcdServer) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        cli_command(*tls_args(secure_etcd), "--user", "root", "list", "secure/svc"),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,  # no controlling terminal: getpass uses stdin, the pty
    )
    os.close(terminal)
    try:
        assert process.stderr is not None
        prompt = b""
        deadline = time.monotonic() + 15
        while b"Password" not in prompt:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no password prompt, got {prompt!r}"
            ready, _, _ = select.select([process.stderr], [], [], remaining)
            if ready:
                chunk = os.read(process.stderr.fileno(), 1024)
                assert chunk, f"stderr ended before the prompt: {prompt!r}"
                prompt += chunk
        os.write(controller, f"{PASSWORD}\n".encode())
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        os.close(controller)
    assert process.returncode == 0
    assert b"secure/svc/e1" in stdout


# -- --debug ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_debug_logs_the_client_but_no_secret(secure_etcd: EtcdServer) -> None:
    # The token detector must know a token when it sees one.
    client = await aiodiscovery.connect(
        secure_etcd.url, **secure_etcd.tls_kwargs(), username="root", password=PASSWORD
    )
    try:
        assert client.metadata is not None
        [(_, token)] = client.metadata
        assert SIMPLE_TOKEN.fullmatch(token)
    finally:
        await client.close()

    def debug_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return cli("--debug", *tls_args(secure_etcd), "--user", "root", *args, **env)

    ok = await anyio.to_thread.run_sync(
        lambda: debug_run("add", "secure/svc/debug", "10.0.0.9:1", ETCDCTL_PASSWORD=PASSWORD)
    )
    assert ok.returncode == 0, ok.stderr
    assert "aiodiscovery: debug: authenticated to etcd as user 'root'" in ok.stderr
    assert_no_secret(ok.stdout + ok.stderr, secure_etcd)
    # A failure under --debug logs its traceback: no secret in that either.
    failed = await anyio.to_thread.run_sync(
        lambda: debug_run("list", "secure/svc", ETCDCTL_PASSWORD="not-" + PASSWORD)
    )
    assert failed.returncode == 1
    assert "Traceback" in failed.stderr
    assert_no_secret(failed.stdout + failed.stderr, secure_etcd, "not-" + PASSWORD)


# -- --server-name ---------------------------------------------------------------------------


def test_server_name_checks_the_certificate_against_another_name(tmp_path: Path) -> None:
    # etcd's certificate names 127.0.0.1 (the kit's health probe dials that) and etcd.test, but
    # not localhost: dialled as localhost, only --server-name etcd.test gets through.
    files = TLSFiles.generate(tmp_path / "pki", hosts=("127.0.0.1", "etcd.test"))
    with EtcdServer(tls_files=files) as etcd:
        etcd.etcdctl("put", "named/svc/e1", SEED)
        url = etcd.url.replace("127.0.0.1", "localhost")
        args = ("--endpoints", url, "--cacert", str(files.ca_path), "--dial-timeout", "2s")
        result = run_cli(*args, "--server-name", "etcd.test", "list", "named/svc", "--json")
        assert listed(result) == ["named/svc/e1"]
        refused = run_cli(*args, "list", "named/svc")
        assert refused.returncode == 1
        assert "cannot reach etcd" in one_error_line(refused)


def test_no_password_in_a_repr() -> None:
    from aiodiscovery._cli._parser import build_parser  # noqa: PLC0415
    from aiodiscovery._cli._settings import settings_from_args  # noqa: PLC0415

    args = build_parser().parse_args(["--user", "root", "--password-stdin", "list", "svc"])
    stdin = io.StringIO(f"{PASSWORD}\n")
    settings = settings_from_args(args, {}, stdin)
    assert (settings.username, settings.password) == ("root", PASSWORD)
    for shown in (repr(settings), str(settings), repr(vars(args))):
        assert PASSWORD not in shown

"""Helpers shared by the command-line and demo tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

from aiodiscovery.testing import EtcdServer, free_port

from .processes import clean_env, cli_command


def unreachable() -> str:
    """A URL where no etcd listens."""
    return f"http://127.0.0.1:{free_port()}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``aiodiscovery: error:`` line a failed command printed (and nothing else)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiodiscovery: error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def printable(text: str) -> bool:
    """Whether ``text`` holds nothing a terminal could take for a control sequence."""
    return all(c.isprintable() or c == "\n" for c in text)


def tls_args(etcd: EtcdServer) -> list[str]:
    """The command-line options that reach a TLS etcd: endpoints, CA and, if asked, a client
    certificate."""
    args = ["--endpoints", etcd.url, "--cacert", str(etcd.ca_path)]
    if etcd.client_cert_auth:
        args += ["--cert", str(etcd.client_cert_path), "--key", str(etcd.client_key_path)]
    return args


def into_closed_pipe(
    args: Sequence[str], marker: str, then: Callable[[], object] = lambda: None
) -> tuple[int, list[str], str]:
    """Run the command line as ``aiodiscovery ARGS | head`` would: read its output up to the
    line holding ``marker``, close the pipe, call ``then`` (to make it write again), and wait.

    Returns the exit status, the lines read and what it wrote on stderr.
    """
    with subprocess.Popen(
        cli_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as process:
        assert process.stdout is not None
        try:
            lines: list[str] = []
            while marker not in (line := process.stdout.readline()):
                assert line, "\n".join(lines)
                lines.append(line)
            process.stdout.close()
            then()
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
    return process.returncode, lines, stderr

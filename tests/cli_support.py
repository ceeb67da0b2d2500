"""Helpers shared by the command-line and demo tests."""

from __future__ import annotations

import subprocess

from aiodiscovery.testing import EtcdServer, free_port


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


def read_until_then_close(process: subprocess.Popen[str], marker: str) -> list[str]:
    """Read stdout until a line holds ``marker``, then close it, as ``head`` does."""
    assert process.stdout is not None
    lines: list[str] = []
    while marker not in (line := process.stdout.readline()):
        assert line, "\n".join(lines)
        lines.append(line)
    process.stdout.close()
    return lines

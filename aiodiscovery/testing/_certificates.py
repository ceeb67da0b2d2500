"""A throw-away test PKI: a CA, a server and a client certificate, written as PEM files."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSFiles", "write_private_file"]

_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700


@contextlib.contextmanager
def _directory_fd(directory: Path) -> Iterator[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def write_private_file(directory: Path, name: str, data: bytes) -> Path:
    """Write ``directory/name`` as a new file readable by the owner only.

    Whatever was at that name goes first (a symlink is removed, never followed); the file is then
    created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600), so nothing planted between
    the two steps is ever written through, and no old file keeps its old mode.
    """
    path = directory / name
    with _directory_fd(directory) as dir_fd:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, f"cannot replace {path}: it is a directory"
            ) from None
        except PermissionError as exc:
            raise PermissionError(exc.errno, f"cannot replace {path}: {exc.strerror}") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, _FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST, f"{path} was created by someone else while it was being replaced"
            ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away test PKI: a CA, a server and a client certificate.

    The server certificate is valid for ``127.0.0.1``, ``::1`` and ``localhost``; the client
    certificate's common name is ``aiodiscovery-test-client`` (no etcd user of that name exists, so
    with authentication on it grants nothing by itself). A second client certificate, with no
    common name, is for etcd's gRPC proxy: it refuses one that names a user, since it would act as
    that user for every client. Keys are ECDSA P-256, unencrypted.
    """

    directory: Path

    @property
    def ca_path(self) -> Path:
        """The CA certificate."""
        return self.directory / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        """The server certificate, signed by the CA."""
        return self.directory / "server.pem"

    @property
    def server_key_path(self) -> Path:
        """The server certificate's key."""
        return self.directory / "server-key.pem"

    @property
    def client_cert_path(self) -> Path:
        """The client certificate, signed by the CA."""
        return self.directory / "client.pem"

    @property
    def client_key_path(self) -> Path:
        """The client certificate's key."""
        return self.directory / "client-key.pem"

    @property
    def proxy_cert_path(self) -> Path:
        """A client certificate with no common name, for etcd's gRPC proxy."""
        return self.directory / "proxy-client.pem"

    @property
    def proxy_key_path(self) -> Path:
        """The key of :attr:`proxy_cert_path`."""
        return self.directory / "proxy-client-key.pem"

    @classmethod
    def generate(
        cls,
        directory: str | os.PathLike[str],
        *,
        hosts: Sequence[str] = ("127.0.0.1", "::1", "localhost"),
        client_name: str = "aiodiscovery-test-client",
        days: int = 30,
    ) -> TLSFiles:
        """Write a fresh CA, server and client certificate with their keys into ``directory``.

        A new directory is made readable by the owner only. Every file is created anew with mode
        0600 (see :func:`write_private_file`): an existing file of the same name is replaced, a
        symlink there is removed, not followed.
        """
        try:
            from ._pki import issue  # noqa: PLC0415
        except ImportError:
            raise RuntimeError(
                "TLS test servers need the cryptography package: pip install cryptography"
            ) from None
        files = cls(Path(directory))
        files.directory.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
        pems = issue(hosts=hosts, client_name=client_name, days=days)
        for path, data in zip(files.paths(), pems, strict=True):
            write_private_file(files.directory, path.name, data)
        return files

    def paths(self) -> tuple[Path, ...]:
        """Every file: the CA, then each certificate followed by its key (server, client,
        proxy client)."""
        return (
            self.ca_path,
            self.server_cert_path,
            self.server_key_path,
            self.client_cert_path,
            self.client_key_path,
            self.proxy_cert_path,
            self.proxy_key_path,
        )

    def exists(self) -> bool:
        """Whether every file is in place."""
        return all(path.exists() for path in self.paths())

"""TLS for the etcd channel: loading PEM material and explaining failed handshakes."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc

__all__ = ["PemSource", "TLSConfig", "diagnose", "system_roots", "tls_config"]

#: A PEM certificate or key: a file path, or the PEM data itself (``bytes``, or a ``str`` that
#: contains ``-----BEGIN`` or a line break).
PemSource: TypeAlias = "str | os.PathLike[str] | bytes"

_BOM = "\ufeff"
# What base64 or base64url key material is made of.
_ENCODED = re.compile(r"[A-Za-z0-9+/=_\s-]+")
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")
_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def _is_data(value: str) -> bool:
    # No file name holds a PEM header, a line break or a NUL: such a string is key material
    # (openssl pkcs12 output starting "Bag Attributes", a PEM with a byte-order mark...).
    return "-----BEGIN" in value or any(c in value for c in "\n\r\0")


def _shown_path(value: str | os.PathLike[str]) -> str | None:
    """How an unreadable path may be named in an error, or ``None`` when it must not be.

    A path object is a path. A ``str`` made only of base64 characters and blanks may be a key
    given by mistake (a bare base64 key reads like a file name): it is named only when a file
    of that name exists. Any other ``str`` (``ca.pem``, ``/etc/etcd/ca.crt``) is named.
    """
    path = os.fspath(value)
    if isinstance(value, str) and _ENCODED.fullmatch(path) and not os.path.lexists(path):
        return None
    return repr(path)


def _read_file(value: str | os.PathLike[str], what: str) -> tuple[bytes, str]:
    shown = _shown_path(value)
    try:
        with open(os.fspath(value), "rb") as file:
            return file.read(), f"file {shown}"
    except OSError as exc:
        error = exc
    # Raised outside the handler: the original error (whose filename is the value) must not
    # ride along as __context__.
    where = f"file {shown}" if shown else "a string that reads like base64 key material (not shown)"
    raise type(error)(error.errno, f"cannot read the etcd {what}: {where}: {error.strerror}")


def _read_pem(value: PemSource, what: str) -> bytes:
    """Load a PEM certificate or key given as a path or as data; errors never quote data."""
    if isinstance(value, bytes | bytearray | memoryview):
        data, origin = bytes(value), "given as bytes"
    elif isinstance(value, str) and _is_data(value):
        data, origin = value.removeprefix(_BOM).encode(), "given as a string"
    elif isinstance(value, str | os.PathLike):
        data, origin = _read_file(value, what)
    else:
        raise TypeError(f"the etcd {what} must be a file path or PEM data, not {type(value)}")
    if b"-----BEGIN" not in data:
        raise ValueError(f"the etcd {what} ({origin}) is not in PEM format")
    return data.removeprefix(_BOM.encode())


def _certificates_in(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as file:
            return _CERTIFICATE.findall(file.read())
    except OSError:
        return []


@functools.lru_cache(maxsize=4)
def _load_roots(cafile: str | None, capath: str | None, _signature: object) -> bytes | None:
    blocks = [] if cafile is None else _certificates_in(cafile)
    if capath is not None:
        with contextlib.suppress(OSError):
            # Only the files OpenSSL's directory lookup reads: named <subject hash>.<n>.
            names = sorted(n for n in os.listdir(capath) if _HASHED_NAME.fullmatch(n))
            for name in names:
                blocks += _certificates_in(os.path.join(capath, name))
    unique = list(dict.fromkeys(blocks))
    return b"\n".join(unique) + b"\n" if unique else None


def _signature(*paths: str | None) -> tuple[object, ...]:
    stats: list[object] = []
    for path in paths:
        try:
            info = os.stat(path) if path is not None else None
        except OSError:
            info = None
        stats.append(None if info is None else (info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stats)


def system_roots() -> bytes | None:
    """The system's trusted CA certificates (PEM), or ``None`` to leave the choice to grpc.

    The store is OpenSSL's default verify paths as :func:`ssl.get_default_verify_paths` reports
    them: the CA file and the hashed certificate directory, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``
    when set. Without it, grpc would trust the roots bundled in grpcio, not the system's, so a
    private CA added to the system store would not be trusted. ``None`` when the store holds no
    certificate (grpc then uses its bundled roots), or when ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``
    is set: grpc honours that file itself, as in every grpc program. Read once, and again only when
    the CA file or the directory changes.
    """
    if os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        return None
    paths = ssl.get_default_verify_paths()
    return _load_roots(paths.cafile, paths.capath, _signature(paths.cafile, paths.capath))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """What a secure channel needs. The PEM data stays out of ``repr``."""

    ca: bytes | None = field(repr=False)
    cert: bytes | None = field(repr=False)
    key: bytes | None = field(repr=False)
    server_name: str | None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials: ``ca``, else the system's roots (see :func:`system_roots`)."""
        roots = self.ca if self.ca is not None else system_roots()
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=self.key, certificate_chain=self.cert
        )


def tls_config(
    urls: Sequence[str],
    ca: PemSource | None,
    cert: PemSource | None,
    key: PemSource | None,
    server_name: str | None,
) -> TLSConfig | None:
    if (cert is None) != (key is None):
        missing, given = ("key", "cert") if key is None else ("cert", "key")
        raise ValueError(
            f"a client certificate needs both cert= and key=; {given}= was given without {missing}="
        )
    if not urls[0].startswith("https://"):
        given_options = [n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if v is not None]
        if server_name is not None:
            given_options.append("server_name")
        if given_options:
            raise ValueError(
                f"TLS options ({', '.join(f'{n}=' for n in given_options)}) need https:// etcd "
                f"URLs, got {', '.join(urls)}"
            )
        return None
    if server_name is not None and not server_name.strip():
        raise ValueError("server_name must not be empty")
    if ca is None:
        # Read where the PEM files are read: credentials() then finds them cached.
        system_roots()
    return TLSConfig(
        ca=None if ca is None else _read_pem(ca, "CA certificate (ca=)"),
        cert=None if cert is None else _read_pem(cert, "client certificate (cert=)"),
        key=None if key is None else _read_pem(key, "client key (key=)"),
        server_name=server_name,
    )


def diagnose(details: str, tls: bool) -> str:
    """A hint for the usual misconfigurations, from gRPC's last connection error."""
    text = details.lower()
    if "certificate_verify_failed" in text:
        return (
            "the server's certificate is not signed by the trusted CA (pass the CA that signed "
            "it as ca=)"
        )
    if "hostname verification" in text:
        return (
            "the server's certificate is not valid for the name dialled (pass the name it was "
            "issued for as server_name=)"
        )
    if "bad_certificate" in text or "certificate_required" in text:
        return (
            "etcd refused the client certificate (it requires one signed by its trusted CA: "
            "pass cert= and key=)"
        )
    if tls and "tsi_data_corrupted" in text:
        # With TLS 1.3 the server checks the client's certificate after the client has finished
        # its handshake, so a refusal (etcd 3.4.23's Go 1.19 build) arrives as the first record
        # gRPC reads, and the alert's name stays in grpc core's log.
        return (
            "etcd ended the connection right after the TLS handshake: it most likely refused the "
            "client certificate (it requires one signed by its trusted CA: pass cert= and key=)"
        )
    if "security handshaker" in text or "private key" in text:
        return "the client certificate and key do not match or cannot be loaded"
    if tls and "handshake read failed" in text:
        return "etcd does not speak TLS there (use http:// URLs)"
    if not tls and ("socket closed" in text or "connection reset" in text):
        return "etcd closed the connection: if it serves TLS, use https:// URLs (and ca=)"
    return ""

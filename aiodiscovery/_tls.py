"""TLS for the etcd channel: loading PEM material and explaining failed handshakes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc

__all__ = ["PemSource", "TLSConfig", "diagnose", "tls_config"]

#: A PEM certificate or key: a file path, or the PEM data itself (``bytes``, or a ``str`` that
#: starts with ``-----BEGIN``).
PemSource: TypeAlias = "str | os.PathLike[str] | bytes"


def _read_pem(value: PemSource, what: str) -> bytes:
    """Load a PEM certificate or key given as a path or as data; errors name the file only."""
    if isinstance(value, bytes | bytearray | memoryview):
        data, origin = bytes(value), "given as bytes"
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data, origin = value.encode(), "given as a PEM string"
    elif isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            # Same exception type (FileNotFoundError, PermissionError, ...), clearer message.
            raise type(exc)(
                exc.errno, f"cannot read the etcd {what} file {path!r}: {exc.strerror}"
            ) from None
        origin = f"file {path!r}"
    else:
        raise TypeError(f"the etcd {what} must be a file path or PEM bytes, not {type(value)}")
    if b"-----BEGIN" not in data:
        raise ValueError(f"the etcd {what} ({origin}) is not in PEM format")
    return data


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """What a secure channel needs. The PEM data stays out of ``repr``."""

    ca: bytes | None = field(repr=False)
    cert: bytes | None = field(repr=False)
    key: bytes | None = field(repr=False)
    server_name: str | None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
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
    if "security handshaker" in text or "private key" in text:
        return "the client certificate and key do not match or cannot be loaded"
    if tls and "handshake read failed" in text:
        return "etcd does not speak TLS there (use http:// URLs)"
    if not tls and ("socket closed" in text or "connection reset" in text):
        return "etcd closed the connection: if it serves TLS, use https:// URLs (and ca=)"
    return ""

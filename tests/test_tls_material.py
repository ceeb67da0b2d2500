"""TLS material given to connect(): data or path, never echoed; the system's trust store."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiodiscovery
from aiodiscovery import EtcdClient, EtcdUnavailableError
from aiodiscovery._etcd.tls import system_roots
from aiodiscovery.testing import EtcdServer, TLSFiles

pytestmark = pytest.mark.anyio

URL = "https://127.0.0.1:2379"


@pytest.fixture(scope="module")
def mtls_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(client_cert_auth=True) as server:
        yield server


@pytest.fixture(scope="module")
def key_pem(mtls_etcd: EtcdServer) -> str:
    return mtls_etcd.client_key_path.read_text()


def base64_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def windows(text: str, size: int = 8) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def bag_attributes(pem: str) -> str:
    """What ``openssl pkcs12 -nodes`` prints before each PEM block."""
    return "Bag Attributes\n    localKeyID: 01 00 00 00 \nKey Attributes: <No Attributes>\n" + pem


async def test_pem_with_a_preamble_or_a_byte_order_mark_is_data(
    mtls_etcd: EtcdServer, key_pem: str
) -> None:
    client = await aiodiscovery.connect(
        mtls_etcd.url,
        ca="\ufeff" + mtls_etcd.ca_path.read_text(),
        cert=bag_attributes(mtls_etcd.client_cert_path.read_text()),
        key=bag_attributes(key_pem),
    )
    try:
        await client.put(b"tls-material", b"v")
    finally:
        await client.close()


def key_material_shapes(pem: str) -> dict[str, str]:
    body = base64_body(pem)
    return {
        "bare base64 on one line": body,
        "bare base64 under the root directory": "/" + body,
        "bare base64 in lines": "\n".join(body[i : i + 64] for i in range(0, len(body), 64)),
        "bag attributes without the PEM header": "Bag Attributes\n  localKeyID: 01\n" + body,
        "base64 with a NUL": body + "\0",
    }


@pytest.mark.parametrize(
    "shape",
    [
        "bare base64 on one line",
        "bare base64 under the root directory",
        "bare base64 in lines",
        "bag attributes without the PEM header",
        "base64 with a NUL",
    ],
)
async def test_key_material_never_appears_in_errors_or_logs(
    mtls_etcd: EtcdServer, key_pem: str, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = key_material_shapes(key_pem)[shape]
    with pytest.raises((OSError, ValueError)) as info:
        EtcdClient(URL, cert=mtls_etcd.client_cert_path, key=value)
    error = info.value
    assert "client key (key=)" in str(error)
    assert error.__context__ is None and error.__cause__ is None
    assert getattr(error, "filename", None) is None
    texts = [
        str(error),
        repr(error),
        repr(error.args),
        "".join(traceback.format_exception(error)),
        caplog.text,
    ]
    leaked = {w for w in windows(base64_body(key_pem)) if any(w in text for text in texts)}
    assert not leaked
    assert not any(value in text for text in texts)


async def test_a_string_that_reads_like_base64_is_named_only_if_the_file_exists(
    tmp_path: Path,
) -> None:
    in_existing_directory = str(tmp_path / "missing.pem")
    with pytest.raises(FileNotFoundError, match="CA certificate") as named:
        EtcdClient(URL, ca=in_existing_directory)
    assert in_existing_directory in str(named.value)
    with pytest.raises(FileNotFoundError, match=r"CA certificate.*no-such-ca\.pem"):
        EtcdClient(URL, ca="no-such-ca.pem")
    with pytest.raises(
        FileNotFoundError, match=r"reads like base64 key material \(not shown\)"
    ) as hidden:
        EtcdClient(URL, ca="no-such-ca")
    assert "no-such-ca" not in str(hidden.value)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match="not in PEM format") as existing:
        EtcdClient(URL, ca=str(not_pem))
    assert str(not_pem) in str(existing.value)
    assert "not a certificate" not in str(existing.value)


@pytest.fixture
def trust_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """An empty system trust store of our own: (CA file, hashed directory)."""
    cafile, capath = tmp_path / "store.pem", tmp_path / "store.d"
    capath.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
    monkeypatch.setenv("SSL_CERT_DIR", str(capath))
    # grpc's own override would take precedence over the system store, by design.
    monkeypatch.delenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", raising=False)
    return cafile, capath


async def test_a_private_ca_in_the_system_store_is_trusted_without_ca(
    mtls_etcd: EtcdServer, trust_store: tuple[Path, Path]
) -> None:
    cafile, _ = trust_store
    cafile.write_bytes(mtls_etcd.ca_path.read_bytes())
    client = await aiodiscovery.connect(
        mtls_etcd.url, cert=mtls_etcd.client_cert_path, key=mtls_etcd.client_key_path
    )
    try:
        await client.put(b"system-roots", b"v")
    finally:
        await client.close()


async def test_a_ca_outside_the_system_store_is_not_trusted(
    mtls_etcd: EtcdServer, trust_store: tuple[Path, Path], tmp_path: Path
) -> None:
    cafile, _ = trust_store
    cafile.write_bytes(TLSFiles.generate(tmp_path / "other").ca_path.read_bytes())
    with pytest.raises(EtcdUnavailableError, match="not signed by the trusted CA"):
        await aiodiscovery.connect(
            mtls_etcd.url,
            cert=mtls_etcd.client_cert_path,
            key=mtls_etcd.client_key_path,
            timeout=1,
        )


async def test_system_roots_read_the_hashed_directory_as_openssl_does(
    mtls_etcd: EtcdServer, trust_store: tuple[Path, Path], tmp_path: Path
) -> None:
    cafile, capath = trust_store
    ours = mtls_etcd.ca_path.read_bytes()
    other = TLSFiles.generate(tmp_path / "other").ca_path.read_bytes()
    assert system_roots() is None  # an empty store leaves grpc its bundled roots
    (capath / "0a1b2c3d.0").write_bytes(ours)
    (capath / "readme.pem").write_bytes(other)  # OpenSSL reads hashed names only
    roots = system_roots()
    assert roots is not None and ours.strip() in roots and other.strip() not in roots
    cafile.write_bytes(other + ours)  # both places: each certificate once
    roots = system_roots()
    assert roots is not None and roots.count(b"BEGIN CERTIFICATE") == 2


async def test_grpcs_own_roots_setting_wins(
    trust_store: tuple[Path, Path], mtls_etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cafile, _ = trust_store
    cafile.write_bytes(mtls_etcd.ca_path.read_bytes())
    assert system_roots() is not None
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(cafile))
    assert system_roots() is None

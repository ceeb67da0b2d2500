"""The Go side of the interop tests: etcd's own naming code, built once and cached.

``naming_probe.go`` is built in GOPATH mode from Debian's ``golang-go`` and
``golang-etcd-server-dev`` (etcd 3.4.23 sources, grpc-go 1.33), with no module proxy. The binary is
cached under a directory keyed by the source and ``go version``, so only the first session after a
change pays the ~30 s build. Without Go the tests fail (never skip) and say what to install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("naming_probe.go")
GOPATH = os.environ.get("AIODISCOVERY_GOPATH", "/usr/share/gocode")
NAMING = Path(GOPATH, "src/go.etcd.io/etcd/clientv3/naming/endpoints")
INSTALL = (
    "the Go interop tests run etcd's own Go naming code: install Go and etcd's Go sources with "
    "`apt-get install -y golang-go golang-etcd-server-dev` (Debian/Ubuntu; .ci/run does it), or "
    "set AIODISCOVERY_GOPATH to a GOPATH holding go.etcd.io/etcd/clientv3 (3.4)"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


def _cache_root() -> Path:
    configured = os.environ.get("AIODISCOVERY_INTEROP_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "aiodiscovery", "interop")


def build_probe(source: Path = SOURCE) -> Path:
    """Return the path of the built Go program, building it if the cache lacks this version."""
    go = shutil.which("go")
    if go is None or not NAMING.is_dir():
        missing = "the `go` command" if go is None else f"{NAMING}"
        pytest.fail(f"{missing} not found: {INSTALL}", pytrace=False)
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(source.read_bytes() + version.encode() + GOPATH.encode()).hexdigest()
    root = _cache_root()
    binary = root / digest[:24] / source.stem
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOCACHE": str(root / "gocache"),
        "CGO_ENABLED": "0",
    }
    # Build beside the final name and rename: a concurrent session never sees half a binary.
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        out = Path(tmp, source.stem)
        result = subprocess.run(
            [go, "build", "-o", str(out), str(source)],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"building {source.name} failed:\n{result.stderr.strip()}\n({INSTALL})",
                pytrace=False,
            )
        out.replace(binary)
    return binary


@pytest.fixture(scope="session")
def naming_probe() -> Path:
    """The Go program driving etcd's naming packages (see naming_probe.go)."""
    return build_probe()


@pytest.fixture(scope="session")
def orca_probe() -> Path:
    """A grpc-go client of ORCA load reports (see orca_probe.go)."""
    return build_probe(SOURCE.with_name("orca_probe.go"))

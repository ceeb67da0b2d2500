"""The test PKI's files: created anew, owner-only, never written through a planted link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aiodiscovery.testing import TLSFiles


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_fresh_private_files(files: TLSFiles) -> None:
    for path in files.paths():
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode), f"{path} is not a regular file"
        assert mode(path) == 0o600, f"{path} has mode {mode(path):o}"
        assert path.read_bytes().startswith(b"-----BEGIN")


def test_generate_writes_owner_only_files_in_an_owner_only_directory(tmp_path: Path) -> None:
    files = TLSFiles.generate(tmp_path / "pki")
    assert files.exists()
    assert mode(files.directory) == 0o700
    assert_fresh_private_files(files)
    assert b"PRIVATE KEY" in files.client_key_path.read_bytes()


def test_a_pre_existing_world_readable_key_is_replaced_not_reused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    old_key = tmp_path / "client-key.pem"
    old_key.write_bytes(b"old key")
    old_key.chmod(0o644)
    # A second name for the old file shows whether it was rewritten or replaced.
    witness = tmp_path / "witness"
    witness.hardlink_to(old_key)
    files = TLSFiles.generate(tmp_path)
    assert_fresh_private_files(files)
    assert not files.client_key_path.samefile(witness)
    assert witness.read_bytes() == b"old key"


@pytest.mark.parametrize("target_exists", [True, False], ids=["existing-target", "dangling"])
def test_a_symlink_at_a_key_path_is_removed_never_followed(
    tmp_path: Path, target_exists: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "victim"
    if target_exists:
        target.write_bytes(b"precious")
        target.chmod(0o644)
    directory = tmp_path / "pki"
    directory.mkdir()
    (directory / "client-key.pem").symlink_to(target)
    (directory / "ca.pem").symlink_to(target)
    files = TLSFiles.generate(directory)
    assert_fresh_private_files(files)
    if target_exists:
        assert target.read_bytes() == b"precious"
        assert mode(target) == 0o644
    else:
        assert not target.exists()
    assert sorted(os.listdir(elsewhere)) == (["victim"] if target_exists else [])


def test_a_directory_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "server-key.pem").mkdir()
    with pytest.raises(IsADirectoryError, match=r"cannot replace .*server-key\.pem: it is a dir"):
        TLSFiles.generate(tmp_path)

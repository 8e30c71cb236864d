"""core.files: the one atomic write, file hash and content key."""

import hashlib

import pytest
import torch

from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write, check_writable, content_key, file_sha256


def test_file_sha256_is_stable_and_content_sensitive(tmp_path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 9000)  # spans several 1 MiB chunks
    assert file_sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest() == file_sha256(big)
    big.write_bytes(bytes(range(256)) * 9000 + b"x")
    assert file_sha256(big) != file_sha256(path)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path) -> None:
    target = tmp_path / "sub" / "table.bin"
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"first"  # the old file stands, and no temporary file is left
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]


def test_content_key_follows_payload_and_tensor_bytes() -> None:
    x = torch.arange(6)
    key = content_key({"a": 1, "b": [1, 2]}, x)
    assert len(key) == 16 and key == content_key({"b": [1, 2], "a": 1}, x.clone())  # key order does not matter
    assert key != content_key({"a": 2, "b": [1, 2]}, x)
    assert key != content_key({"a": 1, "b": [1, 2]}, x + 1)


def test_check_writable_refuses_a_path_below_a_file(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    check_writable(tmp_path / "new" / "deep" / "at.pt")
    with pytest.raises(InputError, match="not a writable folder"):
        check_writable(tmp_path / "file" / "at.pt")

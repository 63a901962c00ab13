"""``s3torch cp`` down written straight to disk (``_direct_writes``): files of every size
against the alignment O_DIRECT asks for, a ring of few buffers reused many times, the
fallbacks where O_DIRECT is refused, and a disk that fills under the writes."""

from __future__ import annotations

import errno
import os
from typing import Any, Dict, List

import pytest

from s3torch import _direct_writes
from tests.conftest import BUCKET, make_client
from tests.integration.test_cli import _checkpoint_of, cli

KiB = 1024

# Around every edge of a 4 KiB block (a page; ALIGN) and of a 64 KiB piece (PIECE in these tests).
SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "under.bin": 4 * KiB - 1,
    "block.bin": 4 * KiB,
    "over.bin": 4 * KiB + 1,
    "piece.bin": 64 * KiB,
    "piece1.bin": 64 * KiB + 1,
    "sub/many.bin": 300 * KiB + 7,
}


@pytest.fixture
def env(seaweed_env):  # type: ignore[no-untyped-def]
    return seaweed_env


@pytest.fixture
def small_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 64 KiB and a ring of 2: every buffer reused, a GET waiting on a write."""
    monkeypatch.setattr(_direct_writes, "PIECE", 64 * KiB)
    monkeypatch.setattr(_direct_writes, "MIN_RING", 2)
    monkeypatch.setattr(_direct_writes, "MAX_RING_BYTES", 128 * KiB)


def _copy(env, tmp_path, prefix, capsys, sizes: Dict[str, int] = SIZES):  # type: ignore[no-untyped-def]
    files = _checkpoint_of(make_client(env), f"{prefix}ckpt/", sizes)
    down = tmp_path / "down"
    code, _, err = cli(capsys, "cp", f"s3://{BUCKET}/{prefix}ckpt", str(down))
    return code, err, files, down


def _has_direct(where: Any) -> bool:
    """Whether the filesystem at ``where`` takes O_DIRECT."""
    try:
        os.close(os.open(where / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except OSError as e:
        assert e.errno == errno.EINVAL
        return False
    finally:
        if os.path.exists(where / "probe"):
            os.remove(where / "probe")


def _spy_writes(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    """(direct?, file name, offset, length) of every pwrite the copy makes."""
    seen: List[Any] = []
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        seen.append((bool(flags & os.O_DIRECT), name, offset, len(memoryview(data))))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


def test_every_size_is_byte_exact_through_a_ring_of_two(env, tmp_path, prefix, capsys, small_ring, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Whole blocks go direct, a file's last partial block through the page cache, and nothing
    is written past a file's end: every file byte-exact at its listed size."""
    assert _direct_writes.supported()  # Linux
    assert _direct_writes.ring_size(10.0) == 2
    writes = _spy_writes(monkeypatch)
    code, err, files, down = _copy(env, tmp_path, prefix, capsys)
    assert code == 0, err
    for name, data in files.items():
        assert (down / name).read_bytes() == data, name
    direct = [w for w in writes if w[0]]
    if not _has_direct(tmp_path):  # DST's filesystem has none (tmpfs before Linux 6.6): all through the page cache
        assert not direct and {w[1] for w in writes} >= {"one.bin", "many.bin"}
        return
    align, piece = _direct_writes.ALIGN, _direct_writes.PIECE
    assert all(off % align == 0 and n % align == 0 for _, _, off, n in direct)
    for name, size in SIZES.items():  # each piece: its whole pages direct, the rest through the page cache
        expected = []
        for off in range(0, size, piece):
            n = min(piece, size - off)
            head = n - n % align
            expected += [(True, off, head)] if head else []
            expected += [(False, off + head, n - head)] if n > head else []
        got = sorted(((d, off, n) for d, f, off, n in writes if f == os.path.basename(name)), key=lambda w: w[1])
        assert got == expected, name


def test_a_filesystem_without_o_direct_gets_the_same_bytes(
    env, tmp_path, prefix, capsys, small_ring, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The open with O_DIRECT refused (EINVAL, as tmpfs and some FUSE filesystems refuse it):
    every byte through an ordinary descriptor instead."""
    real = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    writes = _spy_writes(monkeypatch)
    code, err, files, down = _copy(env, tmp_path, prefix, capsys)
    assert code == 0, err
    for name, data in files.items():
        assert (down / name).read_bytes() == data, name
    assert writes and not any(w[0] for w in writes)


def test_a_device_refusing_the_alignment_gets_the_same_bytes(
    env, tmp_path, prefix, capsys, small_ring, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A direct write refused for its alignment (EINVAL: a device of blocks larger than 4 KiB):
    that piece through the page cache."""
    real = os.pwrite
    refused: List[int] = []

    def picky(fd: int, data: Any, offset: int) -> int:
        flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
        if flags & os.O_DIRECT and offset % (128 * KiB):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", picky)
    code, err, files, down = _copy(env, tmp_path, prefix, capsys)
    assert code == 0, err
    for name, data in files.items():
        assert (down / name).read_bytes() == data, name
    assert (64 * KiB in refused) == _has_direct(tmp_path)  # (none is direct where none can be)


def test_a_disk_that_fills_under_the_writes_fails_cleanly(
    env, tmp_path, prefix, capsys, small_ring, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A filesystem that allocates no blocks ahead fills while the pieces are written (ENOSPC
    from a write): exit 4, one line naming the file, the GETs in flight cancelled, and the files
    of the copy removed (they would hold the disk full with a copy nothing loads)."""
    real = os.pwrite
    calls: List[int] = []

    def filling(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", filling)
    sizes = {"a.bin": 200 * KiB, "b.bin": 500 * KiB}
    code, err, _, down = _copy(env, tmp_path, prefix, capsys, sizes)
    assert code == 4, err
    assert "No space left on device" in err and "the copy stopped before its .metadata" in err, err
    assert "removed the files it had written" in err, err
    assert sorted(os.listdir(down)) == [], os.listdir(down)


@pytest.mark.parametrize("path", ["direct", "mapped"])
def test_a_file_swapped_after_its_allocation_is_not_written_through(
    env, tmp_path, prefix, capsys, monkeypatch, path
) -> None:  # type: ignore[no-untyped-def]
    """Each file is opened again by its path when its first GET starts (a copy holds only the
    files in flight open): another file put at that path meanwhile (a symlink to a file of the
    user's, in a destination others can write to) fails the copy, exit 4, naming the path, and
    the file it points to keeps its bytes."""
    from s3torch import _local_files

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me" * 1000)
    real = _local_files.allocate

    def allocate_then_swap(f: Any, size: int) -> None:
        real(f, size)
        if f.name.endswith("b.bin"):  # once allocated: replaced by a link to the victim
            os.remove(f.name)
            os.symlink(victim, f.name)

    monkeypatch.setattr(_local_files, "allocate", allocate_then_swap)
    if path == "mapped":
        monkeypatch.setattr(_direct_writes, "supported", lambda: False)
    code, err, _, down = _copy(env, tmp_path, prefix, capsys, {"a.bin": 100 * KiB, "b.bin": 100 * KiB})
    assert code == 4, err
    assert f"{down / 'b.bin'}: replaced by another file during the copy" in err, err
    assert victim.read_bytes() == b"keep me" * 1000


def test_an_error_in_a_writer_thread_is_the_one_reported(
    env, tmp_path, prefix, capsys, small_ring, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Any error of a writer thread (here the checksum's, of the second piece) ends the copy
    with that error: its traceback held slices of a ring buffer, which then could not be
    unmapped (a BufferError would have hidden it)."""
    from s3torch import _stored_checksum

    real = _stored_checksum.FileCheck.add
    calls: List[int] = []

    def failing(self: Any, offset: int, data: Any) -> None:
        calls.append(offset)
        if len(calls) == 2:
            head = data[:10]  # a slice of the ring buffer, held by this frame in the traceback
            raise RuntimeError(f"injected in a writer thread after {len(head)} bytes")
        real(self, offset, data)

    monkeypatch.setattr(_stored_checksum.FileCheck, "add", failing)
    with pytest.raises(RuntimeError, match="injected in a writer thread"):
        _copy(env, tmp_path, prefix, capsys, {"a.bin": 300 * KiB})

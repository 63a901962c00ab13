"""``torch.save(tensor, stream)`` for the DCP writer: the same bytes, a faster checksum.

DCP stores every tensor as one ``torch.save`` archive inside a ``.distcp`` file. torch's
archive writer computes the zip CRC-32 of the tensor bytes at about 4 GB/s: a quarter of
the client CPU of a save to S3. Here torch still pickles the tensor
(``torch.serialization._save`` with a recording archive), and we write the zip container
the way torch's ``PyTorchStreamWriter`` does, with the CRC from the native core
(about 14 GB/s). The tensor bytes go to the stream as one buffer, without a copy; or, for a
tensor saved through the staging ring (``_staged_save``), slot by slot, the CRC continued
across them.

The first use in a process checks the result byte for byte against ``torch.save`` on a few
small tensors. If anything differs (a torch version that lays archives out differently),
or a case falls outside what is reproduced here (records of 4 GiB or more, which need
zip64 fields; ``torch.serialization.skip_data``), ``torch.save`` itself is used.
"""

from __future__ import annotations

import io
import logging
import pickle
import struct
import sys
import threading
import zlib
from typing import Any, Iterable, List, Optional, Tuple

import torch

from .. import _crt, _torch_compat

log = logging.getLogger("s3torch.dcp")

_ARCHIVE = "archive/"
_SMALL_RECORD_LIMIT = 0xFFFF0000  # records this large or larger would need zip64 fields
_U64 = (1 << 64) - 1


def _hash_combine(seed: int, value: int) -> int:
    # c10::hash_combine on 64-bit size_t
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2)) & _U64)) & _U64


class _Recorder:
    """Stands in for torch's archive writer in ``torch.serialization._save``."""

    def __init__(self) -> None:
        self.records: List[Tuple[str, Any, int]] = []

    def write_record(self, name: str, data: Any, nbytes: int) -> None:
        self.records.append((name, data, nbytes))

    def write_record_metadata(self, name: str, nbytes: int) -> None:  # only with skip_data
        raise _Unsupported("skip_data")


class _Unsupported(Exception):
    pass


def _storage_bytes(storage: Any) -> torch.Tensor:
    """A uint8 tensor over all of an UntypedStorage's bytes (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage)


class _Archive:
    """Writes zip entries exactly as torch's PyTorchStreamWriter (miniz, stored, data
    descriptors, 'FB' padding so data starts aligned, zip64 end records)."""

    def __init__(self, write: Any, alignment: int) -> None:
        self._write = write
        self._align = alignment
        self._pos = 0
        self._pending = bytearray()
        self._entries: List[Tuple[bytes, int, int, int]] = []  # name, crc, size, header offset
        self._combined_crc = 0

    def _emit(self, data: Any, n: int) -> None:
        self._flush()
        self._write(data)
        self._pos += n

    def _flush(self) -> None:
        if self._pending:
            self._write(bytes(self._pending))
            self._pos += len(self._pending)
            self._pending = bytearray()

    @property
    def position(self) -> int:
        return self._pos + len(self._pending)

    def _begin(self, name: str, size: int) -> Tuple[bytes, int]:
        """Queue a record's local header; returns its full name and offset."""
        full = (_ARCHIVE + name).encode()
        offset = self.position
        pad = -(offset + 30 + len(full) + 4) % self._align
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        # An empty record has no data descriptor (and no descriptor flag).
        flags = 0x0808 if size else 0x0800
        self._pending += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra))
        self._pending += full + extra
        return full, offset

    def _end(self, full: bytes, crc: int, size: int, offset: int) -> None:
        if size:
            self._pending += struct.pack("<IIII", 0x08074B50, crc, size, size)
            self._combined_crc = _hash_combine(self._combined_crc, crc)
        self._entries.append((full, crc, size, offset))

    def add(self, name: str, payload: Any, size: int) -> None:
        """`payload` is bytes, or a uint8 tensor written straight to the stream."""
        full, offset = self._begin(name, size)
        if isinstance(payload, (bytes, bytearray)):
            crc = zlib.crc32(payload)
            self._pending += payload
        else:
            crc = _crt.crc32(payload) if size else 0
            if size:
                self._emit(payload, size)
        self._end(full, crc, size, offset)

    def add_chunks(self, name: str, chunks: Iterable[torch.Tensor], size: int) -> None:
        """A record of ``size`` bytes whose payload arrives as uint8 tensors, each written to
        the stream as it comes (and free for reuse once the next is asked for); the CRC runs
        on across them. The same bytes as ``add`` with the chunks joined."""
        full, offset = self._begin(name, size)
        crc = got = 0
        for chunk in chunks:
            n = chunk.numel()
            if got + n > size:
                raise ValueError(f"record {name}: more than its {size} bytes streamed")
            crc = _crt.crc32(chunk, previous=crc)
            self._emit(chunk, n)
            got += n
        if got != size:
            raise ValueError(f"record {name}: {got} of its {size} bytes streamed")
        self._end(full, crc, size, offset)

    def finish(self, serialization_id_prefix: bytes) -> None:
        self.add("version", b"3\n", 2)
        sid = serialization_id_prefix + str(self._combined_crc).zfill(20).encode()
        self.add(".data/serialization_id", sid, len(sid))
        cd_start = self.position
        for full, crc, size, offset in self._entries:
            self._pending += struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0,
                0,
                0x0808 if size else 0x0800,
                0,
                0,
                0,
                crc,
                size,
                size,
                len(full),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            self._pending += full
        cd_size = self.position - cd_start
        n = len(self._entries)
        z64 = self.position
        self._pending += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_start)
        self._pending += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
        self._pending += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_start, 0)
        self._flush()


_EXPECTED_RECORDS = ["data.pkl", ".format_version", ".storage_alignment", "byteorder", "data/0"]


def _records(tensor: torch.Tensor) -> List[Tuple[str, Any, int]]:
    """What torch.save would put in the archive, or _Unsupported."""
    from torch.serialization import DEFAULT_PROTOCOL

    rec = _Recorder()
    _torch_compat.serialization_save(tensor, rec, pickle, DEFAULT_PROTOCOL, False)
    # One tensor, one storage: the layout the first-use check compared with torch.save (the
    # serialization id's first half hashes these names).
    if [r[0] for r in rec.records] != _EXPECTED_RECORDS:
        raise _Unsupported(f"records {[r[0] for r in rec.records]}")
    if rec.records[-1][2] >= _SMALL_RECORD_LIMIT:
        raise _Unsupported("a record of 4 GiB or more")
    return rec.records


def _write_archive(
    records: List[Tuple[str, Any, int]],
    write: Any,
    sid_prefix: bytes,
    payload: Optional[Iterable[torch.Tensor]] = None,
) -> int:
    """Write the archive of ``records``; with ``payload``, the storage record's bytes are
    those chunks (uint8 tensors), not its storage's."""
    from torch.utils.serialization import config

    archive = _Archive(write, int(config.save.storage_alignment))
    for name, data, nbytes in records:
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, (bytes, bytearray)):
            archive.add(name, bytes(data), nbytes)
        elif payload is not None and name == _EXPECTED_RECORDS[-1]:
            archive.add_chunks(name, payload, nbytes)
        else:
            archive.add(name, _storage_bytes(data), nbytes)
    archive.finish(sid_prefix)
    return archive.position


class _State:
    lock = threading.Lock()
    checked = False
    ok = False
    sid_prefix = b""


def _as_bytes(b: Any) -> bytes:
    return bytes(b.tolist()) if isinstance(b, torch.Tensor) else bytes(b)


def _reference(t: torch.Tensor) -> bytes:
    b = io.BytesIO()
    torch.save(t, b)
    return b.getvalue()


def _check() -> bool:
    """Compare with torch.save on a few tensors, once per process."""
    with _State.lock:
        if _State.checked:
            return _State.ok
        _State.checked = True
        try:
            import zipfile

            from torch.utils.serialization import config

            if not _torch_compat.RECORD_WRITER:
                raise _Unsupported("this torch lacks the private names the record writer needs")

            if not config.save.compute_crc32:
                raise _Unsupported("torch.utils.serialization.config.save.compute_crc32 is off")
            ref = _reference(torch.zeros(1))
            with zipfile.ZipFile(io.BytesIO(ref)) as z:
                prefix = z.read(_ARCHIVE + ".data/serialization_id")[:20]
            samples = [
                torch.arange(1000, dtype=torch.float32),
                torch.zeros(0),
                torch.tensor(True),
                torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),
                torch.ones(5, dtype=torch.bfloat16)[1:4],
            ]
            for t in samples:
                out = io.BytesIO()
                _write_archive(_records(t), lambda b, out=out: out.write(_as_bytes(b)), prefix)
                if out.getvalue() != _reference(t):
                    raise _Unsupported(f"archive of {tuple(t.shape)} {t.dtype} differs from torch.save's")
            _State.sid_prefix = prefix
            _State.ok = True
        except Exception as e:  # any surprise: torch.save it is
            log.debug("s3torch: fast torch.save records off (%s)", e)
            _State.ok = False
        return _State.ok


def _fast_records(tensor: torch.Tensor) -> Optional[List[Tuple[str, Any, int]]]:
    """The records of ``tensor`` (a CPU tensor) when s3torch may write them itself, else None."""
    from torch.utils.serialization import config

    if (
        _check()
        and not getattr(_torch_compat.serialization_tls, "skip_data", False)
        and config.save.compute_crc32
        and tensor.device.type == "cpu"
    ):
        try:
            return _records(tensor)  # also refuses records of 4 GiB or more
        except _Unsupported:
            pass
    return None


def save_tensor(tensor: torch.Tensor, stream: Any) -> None:
    """``torch.save(tensor, stream)``: same bytes; faster when the checks allow."""
    records = _fast_records(tensor)
    if records is None:
        torch.save(tensor, stream)
    else:
        _write_archive(records, stream.write, _State.sid_prefix)


def streamed_records(template: torch.Tensor) -> Optional[List[Tuple[str, Any, int]]]:
    """What ``torch.save(template)`` writes, for :func:`save_streamed`; None where s3torch
    does not write the records itself (then ``torch.save`` of the real tensor it is)."""
    return _fast_records(template)


def save_streamed(records: List[Tuple[str, Any, int]], payload: Iterable[torch.Tensor], stream: Any) -> None:
    """``torch.save`` of the tensor whose records are ``records`` (from
    :func:`streamed_records`), its storage's bytes arriving as ``payload``: uint8 chunks in
    storage order, each written to ``stream`` before the next is asked for."""
    _write_archive(records, stream.write, _State.sid_prefix, payload)


def fast_path_enabled() -> bool:
    return _check()


__all__ = ["save_tensor", "fast_path_enabled", "streamed_records", "save_streamed"]

if sys.byteorder != "little":  # the byteorder record is still right, but nothing here was checked
    _State.checked, _State.ok = True, False

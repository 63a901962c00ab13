"""Tar shards read as a stream: members parsed incrementally from chunks, grouped into samples.

Policy only, no I/O: the chunks come from the caller (the tar dataset feeds a streaming GET's
part buffers), so memory is one member (plus the stream's read-ahead), never the shard.

Outside bytes are hostile: every header's checksum is verified, sizes are parsed strictly
(octal, or GNU base-256) and checked against the shard's size when it is known, long-name and
pax records are bounded (``MAX_META_BYTES``), and a shard must end with the end-of-archive
block: a stream that stops inside a header, inside a member, or at a member boundary without
that block raises :class:`TarShardError` naming the shard and the member, so a truncated shard
never makes a silently short epoch.

Formats: ustar (with its ``prefix`` field), GNU (``L`` long names, ``K`` long link names,
base-256 sizes) and pax (``x`` records: ``path`` and ``size``; ``g`` global records are
skipped). Regular files (types ``0``, NUL, ``7``) are members; directories, links, devices
and FIFOs are skipped; GNU sparse files (``S``) are refused.

Samples follow WebDataset's convention: a member ``dir/000123.seg.png`` belongs to the sample
with key ``dir/000123`` (the path up to the first dot of the base name) under the name
``seg.png``; consecutive members with the same key make one sample. Members whose base name
has no dot (or starts with one) are skipped.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Tuple

BLOCK = 512
MAX_META_BYTES = 1 << 20  # a long name or a pax record set larger than this is refused
_ZERO = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")


class TarShardError(ValueError):
    """A tar shard that is truncated or corrupt. ``shard`` is its URI, ``member`` the member
    being read (or the last one read, ``""`` for the first header), ``offset`` the byte
    offset in the shard where the problem was found."""

    def __init__(self, shard: str, member: str, offset: int, reason: str) -> None:
        where = f"member {member!r}" if member else "its first member"
        super().__init__(f"tar shard {shard}: {reason} ({where}, byte {offset})")
        self.shard = shard
        self.member = member
        self.offset = offset
        self.reason = reason


class _ChunkReader:
    """Exact-size reads over an iterator of byte chunks, counting the shard offset."""

    def __init__(self, chunks: Iterable[memoryview], offset: int) -> None:
        self._chunks = iter(chunks)
        self._cur = memoryview(b"")
        self._i = 0
        self.offset = offset  # shard offset of the next byte

    def _next_chunk(self) -> bool:
        for c in self._chunks:
            if len(c):
                self._cur, self._i = memoryview(c).cast("B"), 0
                return True
        return False

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        assert n >= 0, n  # a size from a header is checked before it gets here
        i = self._i
        if i + n <= len(self._cur):
            self._i = i + n
            self.offset += n
            return self._cur[i : i + n].tobytes()
        parts: List[memoryview] = []
        need = n
        while need:
            avail = len(self._cur) - self._i
            if not avail:
                if not self._next_chunk():
                    break
                continue
            take = min(avail, need)
            parts.append(self._cur[self._i : self._i + take])
            self._i += take
            need -= take
        out = b"".join(parts)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> int:
        """Drop ``n`` bytes; returns how many there were."""
        left = n
        while left:
            avail = len(self._cur) - self._i
            if not avail:
                if not self._next_chunk():
                    break
                continue
            take = min(avail, left)
            self._i += take
            left -= take
        self.offset += n - left
        return n - left


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes) -> Optional[int]:
    """A numeric header field: octal (NUL/space padded) or GNU base-256; None if invalid."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:  # negative or over-long: never a valid size
            return None
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        return None
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    if stored is None:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 0x20
    return stored == signed  # some old tars sum signed bytes


def _pax_records(data: bytes) -> Dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records; ValueError if malformed."""
    out: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the records
            break
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        record = data[sp + 1 : pos + length]
        if length <= sp - pos or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed pax record")
        k, _, v = record[:-1].partition(b"=")
        out[k.decode("utf-8")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def members(
    chunks: Iterable[memoryview],
    shard: str,
    *,
    offset: int = 0,
    size: Optional[int] = None,
    end: Optional[List[int]] = None,
) -> Iterator[Tuple[str, bytes, int]]:
    """(name, data, header offset) of each regular file in the tar stream ``chunks``, which
    starts at byte ``offset`` of the shard (a header boundary). ``size``: the shard's size,
    when known (members that run past it are refused before they are read). The header offset
    is where the member's first header (its long-name or pax header, if any) starts. The
    offset of the end-of-archive block is appended to ``end`` when it is reached."""
    r = _ChunkReader(chunks, offset)
    last = ""
    long_name: Optional[str] = None
    pax: Dict[str, str] = {}
    chain_start: Optional[int] = None

    def fail(reason: str, member: str = "") -> TarShardError:
        return TarShardError(shard, member or last, r.offset, reason)

    while True:
        at = r.offset
        block = r.read(BLOCK)
        if len(block) < BLOCK:
            if not block:
                raise fail("ends without the end-of-archive block (truncated?)")
            raise fail(f"ends inside a header ({len(block)} of {BLOCK} bytes; truncated?)")
        if block == _ZERO:
            if long_name is not None or pax:
                raise fail("end-of-archive block after a long-name or pax header")
            if end is not None:
                end.append(at)
            return
        if not _checksum_ok(block):
            raise fail("header checksum mismatch (corrupt, or not a tar)")
        if chain_start is None:
            chain_start = at
        typeflag = block[156:157]
        name_b = _cstr(block[0:100])
        if block[257:263] == b"ustar\0":
            prefix = _cstr(block[345:500])
            if prefix:
                name_b = prefix + b"/" + name_b
        name = name_b.decode("utf-8", "surrogateescape")
        n = _number(block[124:136])
        if n is None:
            raise fail(f"invalid size field {block[124:136]!r}", name)
        if "size" in pax:
            # Decimal digits only: int() would take "-2048" (a member that reads backwards, and
            # a shard that never ends), "+5", " 5" or "5_000".
            if not (pax["size"].isascii() and pax["size"].isdigit()):
                raise fail(f"invalid pax size {pax['size']!r}", name)
            n = int(pax["size"])
        if size is not None and r.offset + n > size:
            raise fail(f"member of {n} bytes runs past the shard's end ({size} bytes)", name)
        padded = -n % BLOCK
        if typeflag in (b"L", b"K", b"x", b"g"):
            if n > MAX_META_BYTES:
                raise fail(f"{typeflag.decode()} header of {n} bytes (more than {MAX_META_BYTES})", name)
            data = r.read(n)
            if len(data) < n or r.skip(padded) < padded:
                raise fail("ends inside a long-name or pax header (truncated?)", name)
            if typeflag == b"L":
                long_name = _cstr(data).decode("utf-8", "surrogateescape")
            elif typeflag == b"x":
                try:
                    pax = _pax_records(data)
                except (ValueError, UnicodeDecodeError):
                    raise fail("malformed pax header", name) from None
            continue  # K (long link name) and g (global records) say nothing about members
        if "path" in pax:
            name = pax["path"]
        elif long_name is not None:
            name = long_name
        long_name, pax = None, {}
        start, chain_start = chain_start, None
        last = name
        if typeflag == b"S":
            raise fail("GNU sparse members are not supported", name)
        if typeflag in _FILE_TYPES:
            data = r.read(n)
            if len(data) < n:
                raise fail(f"ends inside the member ({len(data)} of {n} bytes; truncated?)", name)
            if r.skip(padded) < padded:
                raise fail("ends inside the member's padding (truncated?)", name)
            yield name, data, start
        else:  # directories, links, devices, FIFOs; an unknown type is skipped the same way
            if r.skip(n + padded) < n + padded:
                raise fail("ends inside a member (truncated?)", name)


def split_name(name: str) -> Optional[Tuple[str, str]]:
    """(sample key, field) of a member name, or None for a member that belongs to no sample."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :]


Sample = Dict[str, object]


def samples(
    chunks: Iterable[memoryview], shard: str, *, offset: int = 0, size: Optional[int] = None
) -> Iterator[Tuple[Sample, int]]:
    """(sample, offset after it) for each sample of the tar stream: a dict with ``__key__``,
    ``__url__`` (the shard) and one ``bytes`` value per member. The offset after a sample is
    where the next sample's first header starts (or the end-of-archive block): resuming there
    with a ranged read gives the rest of the shard."""
    current: Optional[Sample] = None
    key = ""
    end: List[int] = []
    for name, data, at in members(chunks, shard, offset=offset, size=size, end=end):
        parts = split_name(name)
        if parts is None:
            continue
        k, field = parts
        if current is not None and k != key:
            yield current, at
            current = None
        if current is None:
            current, key = {"__key__": k, "__url__": shard}, k
        if field in current:
            raise TarShardError(shard, name, at, f"two members for {field!r} in sample {k!r}")
        current[field] = data
    if current is not None:
        yield current, end[0]

"""The datasets' prefetch window: the GETs of the next objects in flight ahead of the consumer.

Policy only; the transfers are the native client's (``start_get_into`` handles, run on CRT
threads). Everything here runs on the consumer's thread: objects are launched when the
consumer asks for the next item, never in the background, so while the consumer sleeps the
window holds at most what it had launched.

Bounds: at most ``count`` objects and ``budget`` bytes of destination memory are held by the
window (in flight or fetched and not yet handed out). One object is always allowed, so an
object larger than the budget still goes through, alone: the window then holds
max(budget, that object). An object handed out belongs to its reader, not to the window.

Order and errors: items come out in the order they went in. A failed GET is kept in its slot
and raised when that item is reached, naming the object; items before it are unaffected.
Closing the window (end of iteration, ``break``, an exception, garbage collection of the
generator) cancels every GET still in flight and waits for the CRT to let go of the memory.

Sizes: an object whose size the listing gave is fetched into memory of that size. One of
unknown size (``from_objects``) is fetched without a HEAD: one GET of its first ``probe``
bytes, which is the whole object when it is smaller; a larger object's size comes with that
answer and the rest is fetched into memory of the full size (as soon as it fits the budget for
one of the next ``POLL_AHEAD`` items, else when it is reached). The probe is sized from the
objects the dataset fetched before, in any window (``ObjectSizes``): objects alike in size cost
one GET each, whatever their size up to a part.

Versions: an item is all of one version of its object. The rest of a large object is held to
its probe's version (If-Match); an object replaced between the two, or since the listing that
gave its size, is fetched again from a new probe (nothing of it was handed out yet), up to
``FETCH_TRIES`` times in all.
"""

from __future__ import annotations

import collections
from typing import Any, Deque, Iterable, Iterator, Optional, Tuple

from . import _crt
from ._checks import is_int
from ._notes import add_note
from .s3reader import S3Reader
from .s3reader.sequential import SequentialS3Reader

MiB = 1024 * 1024
DEFAULT_PREFETCH_BYTES = 128 * MiB
DEFAULT_PREFETCH_COUNT = 64
# First GET of an object of unknown size: at most the client's part size (``native.part_size``),
# so the core treats it as a probe: one ranged GET of the object's first bytes, which tells its
# size when it is larger (the window then fetches the rest); an empty object is no error.
MIN_PROBE_BYTES = 64 * 1024
INITIAL_PROBE_BYTES = 256 * 1024
# A probe covers this share of the recent sizes (ObjectSizes).
SIZE_SAMPLES = 64
PROBE_QUANTILE = 0.9
# How many of the next items the window checks for a finished probe of a large object.
POLL_AHEAD = 4
# Fetches of one item whose object another writer keeps replacing (module docstring).
FETCH_TRIES = 3

# (bucket, key, ObjectInfo from the listing or None)
Entry = Tuple[str, str, Optional["_crt.ObjectInfo"]]


def check_prefetch(prefetch_bytes: Any, prefetch_count: Any) -> None:
    """Raise ValueError for a budget that is not a positive int or a count that is negative."""
    if not is_int(prefetch_bytes) or prefetch_bytes <= 0:
        raise ValueError(f"prefetch_bytes must be a positive int (bytes), got {prefetch_bytes!r}")
    if not is_int(prefetch_count) or prefetch_count < 0:
        raise ValueError(f"prefetch_count must be an int >= 0 (0: no prefetch), got {prefetch_count!r}")


class PrefetchedS3Reader(SequentialS3Reader):
    """A sequential reader over an object a dataset fetched ahead: served from memory. Same
    surface as the sequential reader (``.key``, ``.bucket``, ``read``, ``readinto``, seeks)."""

    def __init__(
        self,
        bucket: str,
        key: str,
        native: "_crt.NativeClient",
        object_info: Optional["_crt.ObjectInfo"],
        data: memoryview,
    ) -> None:
        super().__init__(bucket, key, lambda: native.head(bucket, key, for_read=True), native, object_info)
        self._data = data
        self._length = len(data)

    @property
    def _size(self) -> int:
        return self._length

    def __reduce__(self) -> Tuple[Any, ...]:
        # Pickled with its bytes (S3Reader's docstring): nothing is fetched again.
        client, _ = self._made_by_client()
        return (_prefetched_again, (client, self._bucket, self._key, bytes(self._load()), self._pos))


def _prefetched_again(client: Any, bucket: str, key: str, data: bytes, pos: int) -> PrefetchedS3Reader:
    """A pickled PrefetchedS3Reader, over the bytes it took along."""
    reader = PrefetchedS3Reader(bucket, key, client._get_native(), None, memoryview(data))
    reader._made_by, reader._pos = (client, None), pos
    return reader


class ObjectSizes:
    """The sizes of the last ``SIZE_SAMPLES`` objects of unknown size a dataset fetched in this
    process, and from them the size of the next probe: their ``PROBE_QUANTILE`` quantile. A
    dataset keeps one for all its windows (every map-dataset batch, every epoch), so a new
    window does not start from scratch; a pickled dataset takes it along to its workers.

    Why a quantile and not the largest: a probe's memory counts against the window's budget
    while its GET is in flight, so a few large outliers among small objects would otherwise
    cut how many objects are in flight; they take a second GET instead. Objects alike in size
    cost one GET each."""

    def __init__(self) -> None:
        self._recent: Deque[int] = collections.deque(maxlen=SIZE_SAMPLES)
        self._typical = 0  # the quantile of _recent; -1: to be computed again

    def add(self, size: int) -> None:
        self._recent.append(size)
        self._typical = -1

    def typical(self) -> int:
        """The quantile of the recent sizes; 0 while none is known."""
        if self._typical < 0:
            ordered = sorted(self._recent)
            self._typical = ordered[min(len(ordered) - 1, int(len(ordered) * PROBE_QUANTILE))]
        return self._typical


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _name_object(e: BaseException, bucket: str, key: str) -> BaseException:
    uri = _uri(bucket, key)
    if uri not in str(e):
        add_note(e, f"s3torch: while fetching {uri}")
    return e


class _Slot:
    """One object of the window: its destination memory and the GET (or GETs) filling it."""

    __slots__ = ("bucket", "key", "info", "cost", "buf", "handle", "probe", "size", "expect", "error", "tries")

    def __init__(self, entry: Entry) -> None:
        self.bucket, self.key, self.info = entry
        self.cost = 0  # bytes of the budget this slot holds
        self.buf: Any = None  # destination (HostBuffer or memoryview over one)
        self.handle: Optional["_crt.GetHandle"] = None
        self.probe = 0  # > 0 while the handle is the first GET of an object of unknown size
        self.size = -1  # object size once known
        self.expect = 0  # bytes the handle's GET must bring
        self.error: Optional[BaseException] = None
        self.tries = 1  # fetches of the object started (module docstring: versions)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def release(self) -> None:
        # Dropping the handle waits (GIL released) until the CRT no longer writes into buf.
        self.handle = None
        self.buf = None


class PrefetchWindow:
    """Fetches the objects of ``entries`` ahead of the consumer; ``__iter__`` yields readers in
    order. Use as a context manager (or call ``close()``) so nothing is left in flight."""

    def __init__(
        self,
        native: "_crt.NativeClient",
        entries: Iterable[Entry],
        *,
        budget: int,
        count: int,
        sizes: Optional[ObjectSizes] = None,
    ) -> None:
        self._native = native
        self._entries: Optional[Iterator[Entry]] = iter(entries)
        self._budget = budget
        self._count = max(1, count)
        self._max_probe = max(1, min(native.part_size, budget))
        self._sizes = sizes if sizes is not None else ObjectSizes()  # sizes the probes follow
        self._slots: Deque[_Slot] = collections.deque()
        self._launched = 0  # self._slots[:_launched] are launched; the rest wait for budget
        self._reserved = 0  # bytes held by self._slots

    # --- bookkeeping ------------------------------------------------------------------------
    @property
    def reserved_bytes(self) -> int:
        """Destination bytes the window holds now (in flight or fetched, not handed out)."""
        return self._reserved

    @property
    def pending(self) -> int:
        return len(self._slots)

    def _probe_size(self) -> int:
        # As large as most recent objects (ObjectSizes; datasets' objects are often alike in
        # size, and an exact allocation is much cheaper than an oversized one: above about
        # 128 KiB each one is an mmap; the pages past what arrives are never touched), at
        # least MIN_PROBE_BYTES; INITIAL_PROBE_BYTES until a size is known; at most a part
        # and the budget.
        typical = self._sizes.typical()
        n = max(MIN_PROBE_BYTES, typical) if typical else INITIAL_PROBE_BYTES
        return min(self._max_probe, n)

    def _cost(self, slot: _Slot) -> int:
        return int(slot.info.size) if slot.info is not None else self._probe_size()

    def _fill(self) -> None:
        """Launch GETs for the next entries while the count and the budget allow, in order;
        the rests of large objects near the head first (nearer items come first for the budget)."""
        slots = self._slots
        # Large objects of unknown size among the next few (the head included: _fill runs once
        # the previous head is handed out): start the rest of each once its probe has told the
        # size (further ones are polled as they come closer).
        for i in range(min(POLL_AHEAD, self._launched)):
            slot = slots[i]
            if slot.probe and slot.handle is not None and slot.handle.done():
                self._finish_probe(slot, must=False)
        while self._launched < len(slots):  # those that waited for budget
            slot = slots[self._launched]
            if self._launched and self._reserved + self._cost(slot) > self._budget:
                return
            self._launch(slot)
        while self._entries is not None and len(slots) < self._count:
            try:
                entry = next(self._entries)
            except StopIteration:
                self._entries = None
                return
            slot = _Slot(entry)
            slots.append(slot)
            if self._launched and self._reserved + self._cost(slot) > self._budget:
                return  # launched by a later _fill, or when it reaches the head
            self._launch(slot)

    def _launch(self, slot: _Slot) -> None:
        self._launched += 1
        self._start(slot)

    def _start(self, slot: _Slot) -> None:
        try:
            if slot.info is not None:
                size = int(slot.info.size)
                slot.size = size
                slot.cost = size
                self._reserved += size
                # Listed empty too: a GET, which fails (and is started over, _take) if the
                # object was written since.
                slot.buf = _crt.HostBuffer(size)
                slot.expect = size
                slot.handle = self._native.start_get_into(slot.bucket, slot.key, slot.buf)
            else:
                probe = self._probe_size()
                slot.cost = probe
                self._reserved += probe
                slot.buf = _crt.HostBuffer(probe)
                slot.probe = probe
                slot.handle = self._native.start_get_into(slot.bucket, slot.key, slot.buf)
        except Exception as e:  # a bad key, an allocation failure: raised when the item is reached
            slot.error = _name_object(e, slot.bucket, slot.key)
            slot.handle = None
            slot.buf = None

    def _finish_probe(self, slot: _Slot, must: bool) -> None:
        """The probe GET of an object of unknown size is done (or being waited for): the whole
        object, or its size and first bytes, after which the rest is started (if it fits the
        budget, or ``must``)."""
        handle = slot.handle
        assert handle is not None
        probe = slot.probe
        try:
            got = handle.wait()
        except _crt.S3InvalidArgumentError as e:
            size = handle.object_size
            self._sizes.add(size)
            if size <= probe:
                slot.error = _name_object(e, slot.bucket, slot.key)
                slot.handle, slot.buf, slot.probe = None, None, 0
                return
            extra = size - slot.cost
            if not must and self._reserved + extra > self._budget:
                return  # retried on a later _fill, or forced when it reaches the head
            whole = memoryview(_crt.HostBuffer(size))
            whole[:probe] = memoryview(slot.buf)[:probe]
            slot.cost = size
            self._reserved += extra
            slot.size = size
            slot.expect = size - probe
            slot.probe = 0
            slot.buf = whole
            try:  # the rest, of the probe's version
                slot.handle = self._native.start_get_into(
                    slot.bucket, slot.key, whole[probe:], probe, size - probe, handle.etag
                )
            except Exception as e2:
                slot.error = _name_object(e2, slot.bucket, slot.key)
                slot.handle, slot.buf = None, None
            return
        except Exception as e:
            slot.error = _name_object(e, slot.bucket, slot.key)
            slot.handle, slot.buf, slot.probe = None, None, 0
            return
        # The whole object fitted the probe; the pages past it were never touched.
        self._sizes.add(got)
        self._reserved -= slot.cost - got
        slot.cost = got
        slot.size = got
        slot.buf = memoryview(slot.buf)[:got]
        slot.handle = None
        slot.probe = 0

    def _again(self, slot: _Slot) -> None:
        """The slot's GETs met another version of its object than the one they began with (or
        than its listing's): start over, from a new probe, with no size of the listing's."""
        slot.release()
        self._reserved -= slot.cost
        slot.info, slot.cost, slot.probe, slot.size, slot.expect = None, 0, 0, -1, 0
        slot.tries += 1
        self._start(slot)

    def _take(self, slot: _Slot) -> S3Reader:
        """Wait for the head slot and turn it into a reader (or raise its error)."""
        if self._launched == 0:
            self._launch(slot)  # larger than the budget: it goes alone
        while True:
            if slot.probe and slot.handle is not None:
                self._finish_probe(slot, must=True)
            if slot.error is not None:
                raise slot.error
            if slot.handle is None:
                break
            listed = slot.info is not None
            try:
                got = slot.handle.wait()
            except (_crt.S3ObjectChangedError, _crt.S3InvalidArgumentError) as e:
                # Replaced between probe and rest; or larger than its listing said (the
                # whole-object GET into memory of the listed size).
                if slot.tries < FETCH_TRIES and (isinstance(e, _crt.S3ObjectChangedError) or listed):
                    self._again(slot)
                    continue
                _name_object(e, slot.bucket, slot.key)
                raise
            except Exception as e:
                _name_object(e, slot.bucket, slot.key)
                raise
            if got != slot.expect:
                if listed and slot.tries < FETCH_TRIES:  # smaller than its listing said
                    self._again(slot)
                    continue
                raise _crt.S3Exception(
                    f"GetObject {_uri(slot.bucket, slot.key)}: expected {slot.expect} bytes, got {got} "
                    "(the object keeps changing while it is read?)"
                )
            slot.handle = None
            break
        data = slot.buf if isinstance(slot.buf, memoryview) else memoryview(slot.buf)
        if len(data) != slot.size:
            data = data[: slot.size]
        return PrefetchedS3Reader(slot.bucket, slot.key, self._native, slot.info, data)

    # --- consumer -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[S3Reader]:
        return self

    def __next__(self) -> S3Reader:
        if not self._slots:
            self._fill()
            if not self._slots:
                raise StopIteration
        slot = self._slots[0]
        try:
            reader = self._take(slot)
        finally:
            self._slots.popleft()
            self._launched -= 1
            self._reserved -= slot.cost
            slot.release()
        # The head's memory now belongs to its reader: start the next GETs before the
        # consumer works on this one.
        self._fill()
        return reader

    def close(self) -> None:
        """Cancel every GET still in flight and wait until the CRT has let go of the memory."""
        self._entries = None
        slots = list(self._slots)
        self._slots.clear()
        self._launched = 0
        self._reserved = 0
        for s in slots:
            s.cancel()
        for s in slots:
            s.release()

    def __enter__(self) -> "PrefetchWindow":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

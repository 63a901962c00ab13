"""S3TarDataset: samples streamed out of tar shards (WebDataset's layout), in a seeded,
resumable order. The order of shards and their split across ranks and workers is the
iterable dataset's (``_order``); the parsing is ``_tar``'s."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Generator, Iterable, Iterator, List, Optional, Tuple, Union

import torch.utils.data

from . import _crt, _order, _tar
from ._checks import is_int
from ._client import S3Client
from ._config import S3ClientConfig
from ._datasets import _Base, _Cursor, _Entry, _EpochOrdered, _ObjectsSource, _PrefixSource
from ._notes import add_note
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT

Sample = Dict[str, Any]
# Where a sample starts: (index of its shard in this consumer's list, byte offset, the shard's
# ETag when the offset is inside it: a resume there reads that version or fails, "" if none).
_Where = Tuple[int, int, str]
# (sample, where the next sample starts)
_Located = Tuple[Sample, _Where]


def _identity(sample: Sample) -> Any:
    return sample


def _chunks(stream: "_crt.GetStream") -> Iterator[memoryview]:
    try:
        while True:
            chunk = stream.next_chunk()
            if chunk is None:
                return
            yield memoryview(chunk)
    finally:
        stream.close()


class S3TarDataset(torch.utils.data.IterableDataset, _EpochOrdered, _Base):
    """Samples out of tar shards, each shard streamed (memory: one sample plus the stream's
    read-ahead, ``S3ClientConfig.stream_read_ahead_bytes``, for the shard being read and the
    next one, whose GET starts early to hide its first-byte latency).

    **Samples** follow WebDataset's convention: members ``000123.jpg`` and ``000123.cls``
    (consecutive in the shard) make the sample ``{"__key__": "000123", "__url__": shard URI,
    "jpg": bytes, "cls": bytes}``; the key is the member's path up to the first dot of its
    base name. ``transform`` maps each sample dict. ustar, GNU and pax archives are read (long
    names included); every header's checksum is checked, and a truncated or corrupt shard
    raises ``TarShardError`` naming the shard and the member, never a short epoch.

    **Order**: shards, not samples, are what is shuffled (``shuffle``, ``seed``,
    ``set_epoch``) and split across ranks and DataLoader workers (``enable_sharding``),
    exactly as ``S3IterableDataset`` orders and splits objects. ``shuffle_buffer=n`` (> 1)
    also permutes each consumer's samples within consecutive blocks of ``n`` (seeded by seed,
    epoch, consumer and block), which mixes samples of neighbouring shards; a block is held
    in memory.

    **Resume**: ``state_dict()`` holds the shard and the byte offset where the current block
    starts, and how many of its samples were yielded; ``load_state_dict()`` resumes with a
    ranged GET from that offset, reading no earlier shard and, without a shuffle buffer,
    nothing already yielded (with one, the current block's samples are read again).
    torchdata's ``StatefulDataLoader`` calls both in each worker. A state from another
    dataset (source, shard count, seed, shuffle, shuffle buffer) or another split raises
    ValueError naming what differs. A state inside a shard also holds the shard's ETag: the
    resumed GET is held to that version, so a shard replaced since fails with
    ``S3ObjectChangedError`` instead of parsing another version's bytes from the saved offset.
    """

    _dataset_kind = "tar"
    _state_kind = "tar"

    def __init__(
        self,
        get_entries: Callable[[S3Client], Iterable[_Entry]],
        region: Optional[str],
        *,
        endpoint: Optional[str] = None,
        transform: Callable[[Sample], Any] = _identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 0,
    ) -> None:
        _Base.__init__(
            self,
            region,
            endpoint=endpoint,
            transform=transform,  # type: ignore[arg-type]
            s3client_config=s3client_config,
            reader_constructor=None,
            prefetch_bytes=DEFAULT_PREFETCH_BYTES,
            prefetch_count=DEFAULT_PREFETCH_COUNT,
        )
        if not is_int(shuffle_buffer) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0 (samples), got {shuffle_buffer!r}")
        self.enable_sharding = enable_sharding
        self.shuffle_buffer = int(shuffle_buffer)
        self._init_order(get_entries, shuffle, seed)

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[Sample], Any] = _identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 0,
    ) -> "S3TarDataset":
        """The samples of every tar shard under ``s3_uri`` (shards in listing order, or in
        each epoch's seeded order with ``shuffle=True``)."""
        return cls(
            _PrefixSource(s3_uri),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            enable_sharding=enable_sharding,
            shuffle=shuffle,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
        )

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[Sample], Any] = _identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 0,
    ) -> "S3TarDataset":
        """The samples of the given ``s3://`` tar shards (in the order given, or in each
        epoch's seeded order with ``shuffle=True``)."""
        return cls(
            _ObjectsSource(object_uris),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            enable_sharding=enable_sharding,
            shuffle=shuffle,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
        )

    def _expected(self, consumer: int, consumers: int) -> Dict[str, Any]:
        out = super()._expected(consumer, consumers)
        out["shuffle_buffer"] = self.shuffle_buffer
        return out

    def _check_state(self, state: Any) -> Dict[str, Any]:
        checked = super()._check_state(state)
        _order.check_state(checked, {}, extra_ints=("offset", "block", "taken"))
        etag = checked.get("etag", "")
        if not isinstance(etag, str) or len(etag) > 1024:
            raise ValueError(f"dataset state: etag must be a str (a shard's ETag, or empty), got {etag!r:.80}")
        if checked.get("shuffle_buffer") != self.shuffle_buffer:
            raise ValueError(
                "this state is from another dataset or layout: shuffle_buffer is "
                f"{checked.get('shuffle_buffer')!r} in the state, {self.shuffle_buffer!r} here"
            )
        return checked

    def state_dict(self) -> Dict[str, Any]:
        """Where the current iteration is: epoch, seed, the shard (``position`` in this
        consumer's list) and byte ``offset`` where the current shuffle block starts, the block's
        number and how many of its samples were yielded, and that shard's ETag when the offset
        is inside it; the source's fingerprint and shard count. Never the shard list."""
        state = super().state_dict()
        state.setdefault("offset", 0)
        state.setdefault("block", 0)
        state.setdefault("taken", 0)
        state.setdefault("etag", "")
        state["shuffle_buffer"] = self.shuffle_buffer
        return state

    # --- reading ------------------------------------------------------------------------------
    def _start(self, entry: _Entry, offset: int, etag: str = "") -> Tuple[str, Optional[int], "_crt.GetStream"]:
        bucket, key, info = entry
        native = self._get_client()._get_native()
        size = int(info.size) if info is not None else None
        if offset:
            if size is None:
                size = int(native.head(bucket, key, for_read=True).size)
            # A resume inside the shard: of the version the state was saved on, or an error.
            stream = native.get_stream(bucket, key, offset, max(0, size - offset), 0, etag)
        else:
            stream = native.get_stream(bucket, key, None, None, 0)
        return f"s3://{bucket}/{key}", size, stream

    def _located(self, shards: List[_Entry], first: int, offset: int, etag: str) -> Generator[_Located, None, None]:
        """Samples of ``shards[first:]`` from ``offset`` in the first (of version ``etag``),
        each with where the next one starts; the next shard's GET is started when one begins."""
        ahead: Optional[Tuple[str, Optional[int], "_crt.GetStream"]] = None
        try:
            for i in range(first, len(shards)):
                # No GET ahead only for the first shard (every later one was started early).
                uri, size, stream = ahead if ahead is not None else self._start(shards[i], offset, etag)
                ahead = self._start(shards[i + 1], 0) if i + 1 < len(shards) else None
                at = offset if i == first else 0
                version = ""  # the shard's ETag, known once its first bytes came
                prev: Optional[Sample] = None
                try:
                    for sample, after in _tar.samples(_chunks(stream), uri, offset=at, size=size):
                        version = version or stream.etag
                        if prev is not None:
                            yield prev, (i, at, version)
                        prev, at = sample, after
                except _crt.S3ObjectChangedError as e:
                    if i == first and offset:
                        add_note(
                            e,
                            f"s3torch: resuming {uri} at byte {offset}, as the dataset state says; the shard was "
                            f"replaced since that state was saved (ETag {etag} then), so its samples from that offset "
                            "are not the ones the state counted. Start the epoch again, or resume from a state saved "
                            "at a shard boundary",
                        )
                    raise
                if prev is not None:
                    # The last sample of a shard: the next one starts at the next shard.
                    yield prev, (i + 1, 0, "")
        finally:
            if ahead is not None:
                ahead[2].close()

    def __iter__(self) -> Iterator[Any]:
        cursor, resume, listed = self._begin()
        if listed is None:
            listed = list(self._get_entries(self._get_client()))
            cursor.count = len(listed)
        order = _order.epoch_order(len(listed), self.seed, cursor.epoch, self.shuffle)
        shards = [listed[i] for i in _order.consumer_positions(order, cursor.consumer, cursor.consumers)]
        r = resume or {}
        where = (cursor.position, int(r.get("offset", 0)), str(r.get("etag", "")) if r.get("offset") else "")
        block, taken = int(r.get("block", 0)), int(r.get("taken", 0))
        cursor.extra = dict(offset=where[1], block=block, taken=taken, etag=where[2])
        return self._blocks(cursor, shards, where, block, taken)

    def _blocks(self, cursor: _Cursor, shards: List[_Entry], where: _Where, block: int, taken: int) -> Iterator[Any]:
        size = max(1, self.shuffle_buffer)
        located = self._located(shards, *where)
        try:
            while True:
                items = list(itertools.islice(located, size))
                if not items:
                    return
                perm = list(range(len(items)))
                if size > 1:
                    rng = _order.rng_for("block", self.seed, cursor.epoch, cursor.consumer, block)
                    _order.shuffle_in_place(perm, rng)
                after = items[-1][1]
                for t in range(taken, len(items)):
                    sample = items[perm[t]][0]
                    out = self._transform(sample)  # type: ignore[arg-type]
                    if t + 1 == len(items):  # the block is done: the state points past it
                        cursor.position, off, etag = after
                        cursor.extra = dict(offset=off, block=block + 1, taken=0, etag=etag)
                    else:
                        cursor.position, off, etag = where
                        cursor.extra = dict(offset=off, block=block, taken=t + 1, etag=etag)
                    yield out
                where, block, taken = after, block + 1, 0
        finally:
            located.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_answered_endpoints"] = _crt.answered_endpoints()
        return self._order_state_for_pickle(state)

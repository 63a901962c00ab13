"""S3MapDataset and S3IterableDataset over objects under a prefix or from a list of URIs."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch.utils.data

from . import _crt, _order
from ._client import S3Client
from ._config import S3ClientConfig, default_region
from ._notes import add_note
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT, ObjectSizes, PrefetchWindow, check_prefetch
from ._uri import parse_s3_uri
from ._user_agent import UserAgent
from .s3reader import S3Reader
from .s3reader.constructor import ReaderConstructor, S3ReaderConstructor

log = logging.getLogger("s3torch")

# (bucket, key, ObjectInfo from the listing or None)
_Entry = Tuple[str, str, Optional["_crt.ObjectInfo"]]
LARGE_LISTING = 10_000


def identity(reader: S3Reader) -> S3Reader:
    return reader


def _initialised_dist() -> Optional[Tuple[int, int]]:
    """(rank, world_size) from torch.distributed if it is initialised in this process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _env_dist() -> Optional[Tuple[int, int]]:
    """(rank, world_size) from ``RANK``/``WORLD_SIZE`` (torchrun sets both), None if neither
    is set; ValueError if one is missing or either is not a valid number."""
    rank_s, world_s = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank_s is None and world_s is None:
        return None
    fix = (
        "S3IterableDataset(enable_sharding=True) cannot tell this process's rank and world size: "
        "set both RANK and WORLD_SIZE (as torchrun does), or call torch.distributed.init_process_group "
        "before creating the dataset or its DataLoader"
    )
    if rank_s is None or world_s is None:
        raise ValueError(f"{fix} (RANK={rank_s!r}, WORLD_SIZE={world_s!r})")
    try:
        rank, world = int(rank_s), int(world_s)
    except ValueError:
        raise ValueError(f"{fix} (RANK={rank_s!r}, WORLD_SIZE={world_s!r} are not integers)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"{fix} (RANK={rank} is not in 0..WORLD_SIZE-1 with WORLD_SIZE={world})")
    return rank, world


def _list_prefix(client: S3Client, uri: str) -> Iterator[_Entry]:
    bucket, prefix = parse_s3_uri(uri)
    for page in client.list_objects(bucket, prefix):
        for info in page.object_info:
            if info.key.endswith("/") and info.size == 0:
                continue  # a "directory" marker, not data
            yield bucket, info.key, info


def _from_uris(uris: Union[str, Iterable[str]]) -> List[_Entry]:
    if isinstance(uris, str):
        uris = [uris]
    return [(*parse_s3_uri(u, need_key=True), None) for u in uris]


class _PrefixSource:
    """Lists a prefix (picklable, for spawn-started workers)."""

    def __init__(self, uri: str) -> None:
        parse_s3_uri(uri)  # fail now on a bad URI, not at first access
        self.uri = uri
        self.fingerprint = uri  # what a resume state names its dataset by

    def __call__(self, client: S3Client) -> Iterator[_Entry]:
        return _list_prefix(client, self.uri)


class _ObjectsSource:
    def __init__(self, uris: Union[str, Iterable[str]]) -> None:
        self.entries = _from_uris(uris)
        self.fingerprint = _order.fingerprint_objects(f"s3://{b}/{k}" for b, k, _ in self.entries)

    def __call__(self, client: S3Client) -> List[_Entry]:
        return self.entries


def _apply(transform: Callable[[S3Reader], Any], reader: S3Reader) -> Any:
    try:
        return transform(reader)
    except Exception as e:
        add_note(e, f"s3torch: raised by the dataset transform for {reader.uri}")
        raise


class _Base:
    def __init__(
        self,
        region: Optional[str],
        *,
        endpoint: Optional[str],
        transform: Callable[[S3Reader], Any],
        s3client_config: Optional[S3ClientConfig],
        reader_constructor: Optional[ReaderConstructor],
        prefetch_bytes: int,
        prefetch_count: int,
    ) -> None:
        check_prefetch(prefetch_bytes, prefetch_count)
        # None: resolved once, here, so that every worker signs for the same region.
        self._region = (
            default_region(s3client_config.profile if s3client_config else None) if region is None else region
        )
        self._endpoint = endpoint
        self._transform = transform
        self._config = s3client_config
        self._reader_constructor = reader_constructor
        self._client: Optional[S3Client] = None
        self.prefetch_bytes = prefetch_bytes
        self.prefetch_count = prefetch_count
        self._object_sizes = ObjectSizes()  # what every prefetch window sizes its probes by

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint(self) -> Optional[str]:
        return self._endpoint

    def __setstate__(self, state: dict) -> None:
        # Endpoints that answered in the pickling process are known here too (docs/retries.md):
        # a spawned worker rides out an outage from its first request.
        _crt.mark_answered(state.pop("_answered_endpoints", []))
        self.__dict__.update(state)

    _dataset_kind = ""  # "map" or "iterable": the md/dataset# of the User-Agent

    def _get_client(self) -> S3Client:
        # S3Client itself is per-process safe; this only delays creating it until first use.
        if self._client is None:
            reader_type = S3ReaderConstructor.get_reader_type_string(self._reader_constructor)
            self._client = S3Client(
                self._region,
                endpoint=self._endpoint,
                s3client_config=self._config,
                user_agent=UserAgent([f"md/dataset#{self._dataset_kind} md/reader_type#{reader_type}"]),
            )
        return self._client

    def _reader(self, entry: _Entry) -> S3Reader:
        bucket, key, info = entry
        return self._get_client().get_object(bucket, key, object_info=info, reader_constructor=self._reader_constructor)

    def _prefetching(self) -> bool:
        # Only the sequential reader reads whole objects; a range-based or DCP reader is meant
        # to fetch parts on demand, so its objects are not fetched ahead.
        return self.prefetch_count > 0 and (
            self._reader_constructor is None or type(self._reader_constructor) is ReaderConstructor
        )

    def _transformed(self, entries: Iterable[_Entry]) -> Iterator[Any]:
        """The transform of each entry's reader, in order, with the next objects in flight."""
        if not self._prefetching():
            for entry in entries:
                yield _apply(self._transform, self._reader(entry))
            return
        window = PrefetchWindow(
            self._get_client()._get_native(),
            entries,
            budget=self.prefetch_bytes,
            count=self.prefetch_count,
            sizes=self._object_sizes,
        )
        try:
            for reader in window:
                reader._made_by = (self._get_client(), None)
                yield _apply(self._transform, reader)
        finally:
            window.close()  # on break, error or garbage collection: nothing left in flight


_PREFETCH_DOC = """
    Prefetch (with the default, sequential reader): ``prefetch_count`` objects at most
    (default 64; 0 turns prefetch off) and ``prefetch_bytes`` of their memory at most
    (default 128 MiB; must be > 0; one larger object still goes through, alone) are fetched
    ahead of the consumer, per process (each DataLoader worker has its own window). Items
    come in the same order as without prefetch and are the same readers (``.key``,
    ``.bucket``, ``read()``, seeks), served from memory. A failed GET raises, naming the
    object, when its item is reached. Range-based and DCP readers fetch on demand, as before.
"""


class S3MapDataset(torch.utils.data.Dataset, _Base):
    """Random access to objects. With ``from_prefix``, the prefix is listed once, on the first
    ``len()`` or item access (a log line reports large listings). ``dataset[i]`` fetches one
    object when it is read; a DataLoader with a ``batch_size`` calls ``__getitems__``, which
    fetches the batch's objects concurrently.
    """

    _dataset_kind = "map"

    def __init__(
        self,
        get_entries: Callable[[S3Client], Iterable[_Entry]],
        region: Optional[str],
        *,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        source: str = "",
    ) -> None:
        _Base.__init__(
            self,
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
        )
        self._get_entries = get_entries
        self._entries: Optional[List[_Entry]] = None
        self._source = source

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
    ) -> "S3MapDataset":
        """A dataset of every object under ``s3_uri``, in listing (key) order."""
        return cls(
            _PrefixSource(s3_uri),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
            source=s3_uri,
        )

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
    ) -> "S3MapDataset":
        """A dataset of the given ``s3://`` object URIs, in the order given."""
        return cls(
            _ObjectsSource(object_uris),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
        )

    @property
    def _dataset_entries(self) -> List[_Entry]:
        if self._entries is None:
            t0 = time.monotonic()
            self._entries = list(self._get_entries(self._get_client()))
            if len(self._entries) >= LARGE_LISTING:
                log.info(
                    "s3torch: listed %d objects under %s in %.1fs",
                    len(self._entries),
                    self._source,
                    time.monotonic() - t0,
                )
        return self._entries

    def __len__(self) -> int:
        return len(self._dataset_entries)

    def __getitem__(self, i: int) -> Any:
        entries = self._dataset_entries
        return _apply(self._transform, self._reader(entries[i]))

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """A batch (DataLoader calls this with a batch's indices): its objects fetched
        concurrently, within the prefetch bounds, the transform applied per item in order."""
        entries = self._dataset_entries
        return list(self._transformed([entries[i] for i in indices]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None  # rebuilt per process from the configuration
        state["_answered_endpoints"] = _crt.answered_endpoints()
        return state


S3MapDataset.__doc__ = (S3MapDataset.__doc__ or "") + _PREFETCH_DOC


class _Cursor:
    """Progress of one iteration of an iterable dataset in this process: what state_dict()
    reports. Only the iterating thread writes it."""

    __slots__ = ("epoch", "consumer", "consumers", "position", "count", "extra")

    def __init__(self, epoch: int, consumer: int, consumers: int, position: int, count: Optional[int]) -> None:
        self.epoch = epoch
        self.consumer = consumer
        self.consumers = consumers
        self.position = position  # items this consumer has yielded this epoch
        self.count = count  # items in the listing, once known
        self.extra: Dict[str, Any] = {}  # the tar dataset's place inside a shard


class _EpochOrdered:
    """Seeded shuffle, epochs, sharding by consumer and resume state, shared by the iterable
    datasets (objects and tar shards). See ``_order`` for the order and what a consumer is."""

    _state_kind = ""

    def _init_order(self, get_entries: Callable[[S3Client], Iterable[_Entry]], shuffle: Any, seed: Any) -> None:
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be a bool, got {shuffle!r}")
        self._get_entries = get_entries
        self.shuffle = shuffle
        self.seed = _order.check_seed(seed)
        self._epoch = 0
        # A state loaded by load_state_dict(), applied by the next __iter__ (then dropped).
        self._resume: Optional[Dict[str, Any]] = None
        self._cursor: Optional[_Cursor] = None
        # (rank, world_size) where torch.distributed was initialised when this dataset was made
        # or last pickled; None when it was not (see S3IterableDataset's docstring).
        self._dist: Optional[Tuple[int, int]] = _initialised_dist()

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (``set_epoch``; a loaded state's epoch wins)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration reads (an int >= 0). Call it before
        each epoch, before the DataLoader's iterator is made: workers get the dataset, with its
        epoch, when iteration starts (with ``persistent_workers=True`` they keep the epoch they
        started with)."""
        self._epoch = _order.check_epoch(epoch)

    @property
    def _source(self) -> str:
        return str(getattr(self._get_entries, "fingerprint", type(self._get_entries).__qualname__))

    def _rank_and_world_size(self) -> Tuple[int, int]:
        """The (rank, world_size) this process shards by (see S3IterableDataset's docstring)."""
        return _initialised_dist() or self.__dict__.get("_dist") or _env_dist() or (0, 1)

    def _consumer(self) -> Tuple[int, int]:
        """(consumer, consumers): this (rank, worker) pair's place in the epoch's split."""
        if not self.enable_sharding:  # type: ignore[attr-defined]
            return 0, 1
        rank, world = self._rank_and_world_size()
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank + world * wid, world * nworkers

    def _expected(self, consumer: int, consumers: int) -> Dict[str, Any]:
        return dict(
            kind=self._state_kind,
            source=self._source,
            shuffle=self.shuffle,
            seed=self.seed,
            consumer=consumer,
            consumers=consumers,
        )

    def _check_state(self, state: Any) -> Dict[str, Any]:
        # Static fields are checked where the state is loaded; the consumer where it is used.
        expected = self._expected(0, 1)
        del expected["consumer"], expected["consumers"]
        return _order.check_state(state, expected)

    def state_dict(self) -> Dict[str, Any]:
        """Where the current iteration is: a small dict (epoch, seed, the consumer's position,
        the source's fingerprint and item count; never the object list). torchdata's
        ``StatefulDataLoader`` calls it in each worker; ``load_state_dict`` resumes from it."""
        if self._resume is not None:
            return dict(self._resume)
        cur = self._cursor
        if cur is None:
            consumer, consumers = self._consumer()
            cur = _Cursor(self._epoch, consumer, consumers, 0, None)
        return _order.make_state(
            kind=self._state_kind,
            source=self._source,
            count=cur.count,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=cur.epoch,
            consumer=cur.consumer,
            consumers=cur.consumers,
            position=cur.position,
            **cur.extra,
        )

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Resume the next iteration where ``state_dict`` was taken: the items this consumer had
        not yet yielded, in the same order, skipped by index (nothing already consumed is
        fetched). ValueError if the state is from another dataset (source, item count, seed,
        shuffle) or another split (ranks x workers)."""
        state = self._check_state(state_dict)
        self._resume = state
        self._epoch = state["epoch"]

    def _begin(self) -> Tuple[_Cursor, Optional[Dict[str, Any]], Optional[List[_Entry]]]:
        """Start an iteration: its cursor, the resume state it applies (consumed) and, when the
        order needs the whole listing (shuffle or resume), the listing."""
        consumer, consumers = self._consumer()
        resume, self._resume = self._resume, None
        start = 0
        if resume is not None:
            _order.check_state(resume, self._expected(consumer, consumers))
            start = resume["position"]
        cursor = _Cursor(self._epoch, consumer, consumers, start, None)
        self._cursor = cursor
        entries: Optional[List[_Entry]] = None
        if self.shuffle or resume is not None:
            entries = list(self._get_entries(self._get_client()))  # type: ignore[attr-defined]
            if resume is not None:
                _order.check_count(resume, len(entries), self._source)
            cursor.count = len(entries)
        return cursor, resume, entries

    def _order_state_for_pickle(self, state: dict) -> dict:
        # A DataLoader pickles the dataset for each worker when iteration starts, after
        # init_process_group in the usual program: what the workers shard by.
        state["_dist"] = _initialised_dist() or self.__dict__.get("_dist")
        state["_cursor"] = None  # progress belongs to the iterating process
        return state


def _counted(items: Iterable[Any], cursor: _Cursor) -> Iterator[Any]:
    for item in items:
        cursor.position += 1  # before the yield: a state taken after this item counts it
        yield item


def _listing_counted(entries: Iterable[_Entry], cursor: _Cursor) -> Iterator[Tuple[int, _Entry]]:
    n = 0
    for n, e in enumerate(entries, 1):
        yield n - 1, e
    cursor.count = n


class S3IterableDataset(torch.utils.data.IterableDataset, _EpochOrdered, _Base):
    """Streams objects, the next ones fetched ahead: in listing order, or with
    ``shuffle=True`` in an order that depends on ``(seed, epoch)`` alone (``set_epoch``).

    **Sharding**: with ``enable_sharding``, each object goes to exactly one (distributed rank,
    DataLoader worker) pair: the epoch's ``i``-th object goes to rank ``i % world_size``, and
    within a rank, its ``j``-th object to worker ``j % num_workers`` (as in s3torchconnector).
    Equivalently, consumer ``k = rank + world_size * worker_id`` of ``C = world_size *
    num_workers`` reads the epoch's objects ``k, k + C, k + 2C, ...``. Without sharding every
    process (and every worker) reads the whole epoch.

    **Shuffle**: the epoch's order is a permutation of the listing fixed by ``(seed, epoch)``,
    the same whatever the number of ranks and workers: interleaving the consumers' streams
    round-robin (consumer 0, 1, ..., C-1, 0, ...) gives it back, and a single-rank DataLoader with
    ``batch_size=None`` yields exactly that. Each object is read once per epoch across all
    consumers. Shuffling lists the whole prefix before the first object; prefetch follows the
    shuffled order.

    **Resume**: ``state_dict()`` is small (epoch, seed, this consumer's position, the source's
    fingerprint and object count); ``load_state_dict()`` makes the next iteration yield
    exactly the objects not yet yielded, in the same order, GETting none of those before them.
    torchdata's ``StatefulDataLoader`` calls both in each worker. A state resumes only the same
    dataset (prefix or object list, object count, seed, shuffle) split the same way (ranks x
    workers); anything else raises ValueError naming what differs. The state applies to one
    iteration; the epoch it names becomes the dataset's epoch.

    The rank and world size, whatever starts the DataLoader workers (fork, forkserver, spawn):
    a worker started by forkserver or spawn is a fresh interpreter in which torch.distributed is
    not initialised, so they cannot be read there. They are taken, first found wins, from

    1. torch.distributed in the current process, when it is initialised (no workers, or fork);
    2. the process that made or pickled the dataset: both record them when torch.distributed
       is initialised there, and the pickle a DataLoader sends its workers carries them;
    3. the environment torch's launchers set: ``RANK`` and ``WORLD_SIZE`` (torchrun);
    4. else this is not a distributed job: rank 0 of 1.

    Where only one of ``RANK``/``WORLD_SIZE`` is set, or either is not a valid number, iterating
    raises ValueError naming what to set, rather than reading every object as rank 0 of 1.
    """

    _dataset_kind = "iterable"
    _state_kind = "objects"

    def __init__(
        self,
        get_entries: Callable[[S3Client], Iterable[_Entry]],
        region: Optional[str],
        *,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        _Base.__init__(
            self,
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
        )
        self.enable_sharding = enable_sharding
        self._init_order(get_entries, shuffle, seed)

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
    ) -> "S3IterableDataset":
        """A stream of every object under ``s3_uri``, in listing order (``shuffle=False``) or
        in the seeded order of each epoch (``shuffle=True``, ``seed``, ``set_epoch``)."""
        return cls(
            _PrefixSource(s3_uri),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
            enable_sharding=enable_sharding,
            shuffle=shuffle,
            seed=seed,
        )

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
        shuffle: bool = False,
        seed: int = 0,
    ) -> "S3IterableDataset":
        """A stream of the given ``s3://`` object URIs, in the order given (``shuffle=False``)
        or in the seeded order of each epoch (``shuffle=True``, ``seed``, ``set_epoch``)."""
        return cls(
            _ObjectsSource(object_uris),
            region,
            endpoint=endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
            prefetch_bytes=prefetch_bytes,
            prefetch_count=prefetch_count,
            enable_sharding=enable_sharding,
            shuffle=shuffle,
            seed=seed,
        )

    def __iter__(self) -> Iterator[Any]:
        cursor, _, listed = self._begin()
        selected: Iterable[_Entry]
        if listed is None:
            # Listing order, nothing to skip: objects stream while the prefix is still listed.
            k, c = cursor.consumer, cursor.consumers
            selected = (e for i, e in _listing_counted(self._get_entries(self._get_client()), cursor) if i % c == k)
        else:
            order = _order.epoch_order(len(listed), self.seed, cursor.epoch, self.shuffle)
            picks = _order.consumer_positions(order, cursor.consumer, cursor.consumers, cursor.position)
            selected = (listed[i] for i in picks)
        return _counted(self._transformed(selected), cursor)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_answered_endpoints"] = _crt.answered_endpoints()
        return self._order_state_for_pickle(state)


S3IterableDataset.__doc__ = (S3IterableDataset.__doc__ or "") + _PREFETCH_DOC

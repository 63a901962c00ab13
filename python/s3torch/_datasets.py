"""S3MapDataset and S3IterableDataset over objects under a prefix or from a list of URIs."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch.utils.data

from . import _crt
from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT, PrefetchWindow, check_prefetch
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

    def __call__(self, client: S3Client) -> Iterator[_Entry]:
        return _list_prefix(client, self.uri)


class _ObjectsSource:
    def __init__(self, uris: Union[str, Iterable[str]]) -> None:
        self.entries = _from_uris(uris)

    def __call__(self, client: S3Client) -> List[_Entry]:
        return self.entries


def _apply(transform: Callable[[S3Reader], Any], reader: S3Reader) -> Any:
    try:
        return transform(reader)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"s3torch: raised by the dataset transform for {reader.uri}")
        raise


class _Base:
    def __init__(
        self,
        region: str,
        *,
        endpoint: Optional[str],
        transform: Callable[[S3Reader], Any],
        s3client_config: Optional[S3ClientConfig],
        reader_constructor: Optional[ReaderConstructor],
        prefetch_bytes: int,
        prefetch_count: int,
    ) -> None:
        check_prefetch(prefetch_bytes, prefetch_count)
        self._region = region
        self._endpoint = endpoint
        self._transform = transform
        self._config = s3client_config
        self._reader_constructor = reader_constructor
        self._client: Optional[S3Client] = None
        self.prefetch_bytes = prefetch_bytes
        self.prefetch_count = prefetch_count

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
            self._get_client()._get_native(), entries, budget=self.prefetch_bytes, count=self.prefetch_count
        )
        try:
            for reader in window:
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
        region: str,
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
        region: str,
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
        region: str,
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


class S3IterableDataset(torch.utils.data.IterableDataset, _Base):
    """Streams objects in listing order, the next ones fetched ahead. With
    ``enable_sharding``, each object goes to exactly one (distributed rank, DataLoader worker)
    pair: object ``i`` goes to rank ``i % world_size``, and within a rank, its ``j``-th object
    to worker ``j % num_workers`` (as in s3torchconnector).

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

    def __init__(
        self,
        get_entries: Callable[[S3Client], Iterable[_Entry]],
        region: str,
        *,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
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
        self.enable_sharding = enable_sharding
        # (rank, world_size) where torch.distributed was initialised when this dataset was made
        # or last pickled; None when it was not (see the class docstring).
        self._dist: Optional[Tuple[int, int]] = _initialised_dist()

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
    ) -> "S3IterableDataset":
        """A stream of every object under ``s3_uri``, in listing order."""
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
        )

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        prefetch_count: int = DEFAULT_PREFETCH_COUNT,
        enable_sharding: bool = False,
    ) -> "S3IterableDataset":
        """A stream of the given ``s3://`` object URIs, in the order given."""
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
        )

    def _rank_and_world_size(self) -> Tuple[int, int]:
        """The (rank, world_size) this process shards by (see the class docstring)."""
        return _initialised_dist() or self.__dict__.get("_dist") or _env_dist() or (0, 1)

    def __iter__(self) -> Iterator[Any]:
        entries: Iterable[_Entry] = self._get_entries(self._get_client())
        if self.enable_sharding:
            rank, world = self._rank_and_world_size()
            info = torch.utils.data.get_worker_info()
            wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
            ranks = (e for i, e in enumerate(entries) if i % world == rank)
            entries = (e for j, e in enumerate(ranks) if j % nworkers == wid)
        return self._transformed(entries)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_answered_endpoints"] = _crt.answered_endpoints()
        # A DataLoader pickles the dataset for each worker when iteration starts, after
        # init_process_group in the usual program: what the workers shard by.
        state["_dist"] = _initialised_dist() or self.__dict__.get("_dist")
        return state


S3IterableDataset.__doc__ = (S3IterableDataset.__doc__ or "") + _PREFETCH_DOC

"""The iterable datasets' epoch order and resume state: pure policy, no I/O.

The global order of an epoch is a permutation of the dataset's items (objects, or tar
shards) that depends on ``(seed, epoch)`` alone: Python's ``random.Random``, seeded from a
SHA-256 of the pair, drives a Fisher-Yates shuffle through ``random()``, whose sequence for a
given seed Python keeps the same across versions. Without shuffle it is the identity.

Consumers: with sharding, ``world_size * num_workers`` consumers read one epoch, consumer
``k = rank + world_size * worker_id`` taking the items at global positions ``k, k + C, k + 2C,
...`` (``C`` consumers). That is the same split as before shuffling existed (rank
``i % world_size`` first, then worker ``j % num_workers`` within a rank). Interleaving the
consumers' streams round-robin in ``k`` order gives back the global order, so the global order
never depends on how many ranks and workers share it; a single-rank DataLoader with
``batch_size=None`` yields exactly that interleaving.

A resume state names its consumer and how many items it has yielded this epoch: a consumer
resumes by index (``k + C * position``), reading nothing it skips.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ._checks import is_int

STATE_VERSION = 1


def check_seed(seed: Any) -> int:
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return int(seed)


def check_epoch(epoch: Any) -> int:
    if not is_int(epoch):
        raise ValueError(f"epoch must be an int, got {epoch!r} ({type(epoch).__name__})")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return int(epoch)


def rng_for(*parts: Any) -> random.Random:
    """A generator seeded from the parts alone (never from global random state)."""
    text = ":".join(["s3torch"] + [str(p) for p in parts]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(text).digest()[:16], "big"))


def shuffle_in_place(items: List[Any], rng: random.Random) -> None:
    """Fisher-Yates through ``rng.random()`` (stable across Python versions for one seed)."""
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> Sequence[int]:
    """The global order of an epoch of ``n`` items: indices into the listing."""
    if not shuffle:
        return range(n)
    order = list(range(n))
    shuffle_in_place(order, rng_for("order", seed, epoch))
    return order


def consumer_positions(order: Sequence[int], consumer: int, consumers: int, start: int = 0) -> Sequence[int]:
    """The listing indices consumer ``consumer`` of ``consumers`` reads, from its ``start``-th on."""
    return order[consumer + consumers * start :: consumers]


def fingerprint_objects(uris: Iterable[str]) -> str:
    """A short digest of an object list (a state names its dataset without carrying the list)."""
    h = hashlib.sha256()
    for u in uris:
        h.update(u.encode())
        h.update(b"\n")
    return "objects:sha256:" + h.hexdigest()[:16]


# Fields a state must match to be resumed by a dataset, with how to name them in an error.
_MATCH = (
    ("source", "source (prefix or object list)"),
    ("kind", "dataset kind"),
    ("shuffle", "shuffle"),
    ("seed", "seed"),
    ("consumers", "number of consumers (world_size x num_workers)"),
    ("consumer", "consumer (rank + world_size x worker_id)"),
)


def check_state(state: Any, expected: Mapping[str, Any], extra_ints: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Validate a resume state's shape and that it belongs to the dataset described by
    ``expected`` (the static fields of ``_MATCH``). ValueError names what is missing or differs."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a dataset state must be a dict (from state_dict()), got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"not an s3torch dataset state of version {STATE_VERSION} (version={state.get('version')!r})")
    for name in ("epoch", "position", "consumer", "consumers") + extra_ints:
        v: Any = state.get(name)
        if not is_int(v) or v < 0:
            raise ValueError(f"dataset state: {name} must be an int >= 0, got {v!r}")
    if state.get("count") is not None and (not is_int(state["count"]) or state["count"] < 0):
        raise ValueError(f"dataset state: count must be an int >= 0 or None, got {state['count']!r}")
    for key, label in _MATCH:
        if key in expected and state.get(key) != expected[key]:
            raise ValueError(
                f"this state is from another dataset or layout: {label} is {state.get(key)!r} in the state, "
                f"{expected[key]!r} here"
            )
    return dict(state)


def check_count(state: Mapping[str, Any], count: int, source: str) -> None:
    """The listed item count must be the one the state was saved with (when it knew it)."""
    saved = state.get("count")
    if saved is not None and saved != count:
        raise ValueError(
            f"this state is from another dataset: {source} had {saved} items when it was saved, {count} now"
        )


def make_state(
    *,
    kind: str,
    source: str,
    count: Optional[int],
    shuffle: bool,
    seed: int,
    epoch: int,
    consumer: int,
    consumers: int,
    position: int,
    **extra: Any,
) -> Dict[str, Any]:
    state: Dict[str, Any] = dict(
        version=STATE_VERSION,
        kind=kind,
        source=source,
        count=count,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        consumer=consumer,
        consumers=consumers,
        position=position,
    )
    state.update(extra)
    return state

"""Objects of unknown size in the prefetch window, without a server: the probe size follows
most of the recent sizes (ObjectSizes), not the outliers, and travels with a pickled dataset;
the rests of large objects near the head get the budget before objects further ahead."""

from __future__ import annotations

import pickle
from typing import Dict, List, Optional, Tuple

from s3torch import S3IterableDataset, _crt
from s3torch._prefetch import INITIAL_PROBE_BYTES, PROBE_QUANTILE, SIZE_SAMPLES, ObjectSizes, PrefetchWindow

KiB = 1024
MiB = 1024 * KiB


def test_nothing_known_is_zero() -> None:
    assert ObjectSizes().typical() == 0


def test_objects_alike_give_their_size() -> None:
    sizes = ObjectSizes()
    sizes.add(3 * MiB)
    assert sizes.typical() == 3 * MiB
    for _ in range(100):
        sizes.add(3 * MiB)
    assert sizes.typical() == 3 * MiB


def test_a_few_outliers_do_not_move_the_probe_and_many_do() -> None:
    sizes = ObjectSizes()
    for i in range(SIZE_SAMPLES):  # one in 16 is large: under the quantile's tail
        sizes.add(6 * MiB if i % 16 == 0 else 100 * KiB)
    assert sizes.typical() == 100 * KiB
    assert 1 / 4 > 1 - PROBE_QUANTILE
    for i in range(SIZE_SAMPLES):  # one in 4 is large: more than the quantile leaves out
        sizes.add(6 * MiB if i % 4 == 0 else 100 * KiB)
    assert sizes.typical() == 6 * MiB


def test_only_the_recent_sizes_count() -> None:
    sizes = ObjectSizes()
    for _ in range(SIZE_SAMPLES):
        sizes.add(8 * MiB)
    for _ in range(SIZE_SAMPLES):
        sizes.add(50 * KiB)
    assert sizes.typical() == 50 * KiB


def test_a_pickled_dataset_takes_what_it_learnt_along() -> None:
    ds = S3IterableDataset.from_objects(["s3://b/k"], region="us-east-1", endpoint="http://127.0.0.1:1")
    ds._object_sizes.add(2 * MiB)
    assert pickle.loads(pickle.dumps(ds))._object_sizes.typical() == 2 * MiB


# --- the window's order of GETs, through a stand-in for the native client ----------------------


ETAG = '"v1"'  # every stand-in object's version


class _Handle:
    """A GET that finished at once."""

    def __init__(self, got: int, object_size: int, too_large: bool) -> None:
        self._got, self._size, self._too_large = got, object_size, too_large

    def done(self) -> bool:
        return True

    def wait(self) -> int:
        if self._too_large:  # as the core's probe says it: the object does not fit
            raise _crt.S3InvalidArgumentError("destination buffer too small")
        return self._got

    @property
    def object_size(self) -> int:
        return self._size

    @property
    def etag(self) -> str:
        return ETAG

    def cancel(self) -> None:
        pass


class _Native:
    """start_get_into as the core does it: without a range, a probe of at most a part."""

    part_size = 8 * MiB

    def __init__(self, objects: Dict[str, bytes]) -> None:
        self.objects = objects
        self.log: List[Tuple[str, str]] = []  # ("probe" or "rest", key), in the order started

    def start_get_into(
        self, bucket: str, key: str, buf, offset: Optional[int] = None, length: Optional[int] = None, if_match: str = ""
    ):  # type: ignore[no-untyped-def]
        data, dst = self.objects[key], memoryview(buf).cast("B")
        if offset is None:
            assert len(dst) <= self.part_size
            self.log.append(("probe", key))
            n = min(len(dst), len(data))
            dst[:n] = data[:n]
            return _Handle(n, len(data), len(data) > len(dst))
        assert length == len(dst)
        assert if_match == ETAG  # the rest is held to the probe's version
        self.log.append(("rest", key))
        dst[:] = data[offset : offset + length]
        return _Handle(length, len(data), False)


def test_the_rests_near_the_head_get_the_budget_before_objects_further_ahead() -> None:
    # 4 MiB objects of unknown size: the first window's probes (before any size is known) are
    # small, so each of those objects needs a second GET for its rest. Once the first size is
    # known, further objects get whole-object probes, which fill a tight budget: the rests of
    # the next few objects must go out before them, or each of those objects would wait for
    # its rest only once it reached the head.
    objects = {f"k{i:02d}": bytes([i]) * (4 * MiB) for i in range(24)}
    native = _Native(objects)
    entries = [("b", k, None) for k in sorted(objects)]
    window = PrefetchWindow(native, entries, budget=16 * MiB, count=8)  # type: ignore[arg-type]
    got = [bytes(r.read()) for r in window]
    assert got == [objects[k] for k in sorted(objects)]
    assert INITIAL_PROBE_BYTES < 4 * MiB
    assert native.log[:8] == [("probe", f"k{i:02d}") for i in range(8)]
    log = native.log[8:]
    # The head's own rest, then each next object's as it comes within POLL_AHEAD of the head,
    # all before the first object beyond the first window.
    beyond = log.index(("probe", "k08"))
    assert [k for kind, k in log[:beyond] if kind == "rest"] == [f"k{i:02d}" for i in range(8)]
    # Every object after the first window took one GET.
    assert all(log.count(("probe", f"k{i:02d}")) == 1 and ("rest", f"k{i:02d}") not in log for i in range(8, 24))

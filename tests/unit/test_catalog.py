"""``catalog``: which folders of a listing hold a checkpoint, complete or not, and in which
order they were saved (``list_checkpoints``, ``latest_checkpoint``, ``s3torch ls
--checkpoints``), over made-up listings; hostile key names by hypothesis."""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch._catalog import CheckpointInfo, catalog, latest, order_key

WHERE = "s3://b/run/"


def at(minute: int) -> str:
    return f"2026-12-07T10:{minute:02d}:00.000Z"


def listing(*entries: Tuple[str, int, int]) -> Dict[str, Tuple[int, str]]:
    """(name, size, minute) -> the relative name -> (size, LastModified) a listing gives."""
    return {name: (size, at(minute)) for name, size, minute in entries}


def by_path(found: List[CheckpointInfo]) -> Dict[str, CheckpointInfo]:
    return {c.path[len(WHERE) :]: c for c in found}


def test_a_folder_with_a_metadata_is_a_complete_checkpoint_saved_when_its_metadata_was_written() -> None:
    found = catalog(
        WHERE,
        listing(
            ("step10/__0_0.distcp", 100, 1),
            ("step10/__1_0.distcp", 50, 3),  # the last data file, written after...
            ("step10/.metadata", 7, 2),  # ...the metadata? (a clock, not an order): the marker counts
        ),
    )
    assert found == [
        CheckpointInfo(WHERE + "step10/", "dcp", True, datetime(2026, 12, 7, 10, 2, tzinfo=timezone.utc), 3, 157)
    ]


def test_data_files_without_a_metadata_are_an_incomplete_save_dated_by_its_newest_file() -> None:
    found = by_path(catalog(WHERE, listing(("step20/__0_0.distcp", 100, 4), ("step20/__1_0.distcp", 100, 6))))
    c = found["step20/"]
    assert (c.kind, c.complete, c.files, c.bytes, c.saved.minute if c.saved else None) == ("dcp", False, 2, 200, 6)
    assert latest(list(found.values()), "dcp") is None


def test_a_prefix_strategys_data_files_belong_to_the_checkpoint_above_them() -> None:
    found = by_path(
        catalog(
            WHERE,
            listing(
                ("step1/.metadata", 5, 2),
                ("step1/shard-a/epoch_3/__0_0.distcp", 100, 1),
                ("step1/shard-b/epoch_3/__1_0.distcp", 100, 1),
                ("step1/notes/readme.txt", 9, 1),  # not the checkpoint's: remove_checkpoint refuses it
            ),
        )
    )
    assert list(found) == ["step1/"]
    assert (found["step1/"].files, found["step1/"].bytes) == (3, 205)


def test_models_an_index_or_a_single_weights_file_is_complete_and_shards_without_an_index_are_not() -> None:
    found = by_path(
        catalog(
            WHERE,
            listing(
                ("hf/model-00001-of-00002.safetensors", 10, 1),
                ("hf/model-00002-of-00002.safetensors", 10, 1),
                ("hf/model.safetensors.index.json", 1, 2),
                ("hf/config.json", 1, 0),
                ("one/model.safetensors", 10, 3),
                ("partial/model-00001-of-00002.safetensors", 10, 4),
            ),
        )
    )
    assert {p: (c.kind, c.complete, c.files) for p, c in found.items()} == {
        "hf/": ("safetensors", True, 4),
        "one/": ("safetensors", True, 1),
        "partial/": ("safetensors", False, 1),
    }
    assert latest(list(found.values()), "safetensors").path == WHERE + "one/"  # type: ignore[union-attr]
    assert latest(list(found.values()), "dcp") is None


def test_the_prefix_itself_and_nested_checkpoints_are_each_listed() -> None:
    found = by_path(
        catalog(
            WHERE,
            listing(
                (".metadata", 1, 1), ("__0_0.distcp", 10, 1), ("inner/.metadata", 1, 2), ("inner/__0_0.distcp", 20, 2)
            ),
        )
    )
    assert {p: c.bytes for p, c in found.items()} == {"": 11, "inner/": 21}


def test_oldest_first_by_save_time_then_by_the_numbers_in_the_name() -> None:
    found = catalog(
        WHERE,
        listing(
            ("step2000/.metadata", 1, 5),  # a run that was rolled back after step 2000...
            ("step1100/.metadata", 1, 9),  # ...and saved step 1100 since
            ("step9/.metadata", 1, 1),
            ("step10/.metadata", 1, 1),  # the same second as step9: step9 first
            ("step30/__0_0.distcp", 1, 10),  # incomplete: never the latest
        ),
    )
    assert [c.path[len(WHERE) :] for c in found] == ["step9/", "step10/", "step2000/", "step1100/", "step30/"]
    newest = latest(found, "dcp")
    assert newest is not None and newest.path == WHERE + "step1100/"


def test_a_listing_without_dates_still_lists_undated_ones_first() -> None:
    objects = {
        "a/.metadata": (1, ""),
        "b/.metadata": (1, at(1)),
        "c/.metadata": (1, "not a date"),
        "d/.metadata": (1, "2026-12-07T10:00:30"),  # no zone: UTC, as S3's dates are
    }
    assert [c.path[len(WHERE) :] for c in catalog(WHERE, objects)] == ["a/", "c/", "d/", "b/"]


def test_latest_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        latest([], "pickle")


_segment = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6).filter(
    lambda s: "/" not in s
) | st.sampled_from(["step1", "step2", "shard-a", "epoch_3"])
_base = _segment | st.sampled_from(
    [".metadata", "__0_0.distcp", "__1_0.distcp", "model.safetensors", "model-00001-of-00002.safetensors"]
    + ["model.safetensors.index.json", "x.distcp", ".distcp"]
)
_name = st.builds(lambda d, b: "/".join(d + [b]), st.lists(_segment, max_size=3), _base)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_name, st.tuples(st.integers(0, 10**12), st.integers(0, 59).map(at)), max_size=30))
def test_any_listing_is_cataloged_within_what_was_listed(objects: Dict[str, Tuple[int, str]]) -> None:
    found = catalog(WHERE, objects)
    folders = {posixpath.dirname(n) for n in objects}
    paths = [c.path for c in found]
    assert len(paths) == len(set(paths))
    for c in found:
        d = c.path[len(WHERE) :].rstrip("/")
        assert d in folders  # only a folder that was listed
        assert c.files >= 1 and c.bytes <= sum(s for s, _ in objects.values())
        if c.complete and c.kind == "dcp":
            assert posixpath.join(d, ".metadata") in objects
    # every folder with a .metadata is a complete checkpoint, and no object counts twice
    assert set(paths) >= {WHERE + (d + "/" if d else "") for d in folders if posixpath.join(d, ".metadata") in objects}
    assert sum(c.files for c in found) <= len(objects)
    assert found == sorted(found, key=order_key)
    newest = latest(found, None)
    assert newest is None or (newest.complete and all(newest.saved >= c.saved for c in found if c.complete))  # type: ignore[operator]

"""``plan_removal`` over any key names a bucket may hold (outside text): it only ever names
keys the listing gave, every marker before any data file, and nothing in a sub-folder but a
prefix strategy's ``*.distcp`` files unless recursive; else it refuses with a typed error."""

from __future__ import annotations

from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import S3InvalidArgumentError, S3NotFoundError
from s3torch._remove import plan_removal

PARTS = st.sampled_from(
    ["", "/", ".metadata", ".distcp", ".safetensors", ".safetensors.index.json", "a", "__0_0", "\x1b", "\u202e", ".."]
)
NAMES = st.lists(st.lists(PARTS, min_size=1, max_size=5).map("".join), max_size=12, unique=True)


@settings(max_examples=400, deadline=None)
@given(names=NAMES, recursive=st.booleans())
def test_any_names_give_a_plan_of_listed_keys_markers_first_or_a_typed_refusal(
    names: List[str], recursive: bool
) -> None:
    try:
        markers, data = plan_removal("s3://b/p/", names, recursive)
    except (S3NotFoundError, S3InvalidArgumentError):
        return
    chosen = markers + data
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(names)
    assert all(m.rsplit("/", 1)[-1].endswith((".metadata", ".safetensors.index.json")) for m in markers)
    assert not any(d.rsplit("/", 1)[-1].endswith((".metadata", ".safetensors.index.json")) for d in data)
    if recursive:
        assert set(chosen) == set(names)
    else:
        assert all("/" not in n or n.endswith(".distcp") for n in chosen)
        assert set(chosen) == set(names)  # a plan without recursive takes all or refuses

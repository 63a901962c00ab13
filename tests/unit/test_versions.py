"""ObjectVersions (_versions.py): the rule, on stand-in handles."""

from __future__ import annotations

import pytest

from s3torch._versions import ObjectVersions


class Handle:
    def __init__(self, etag: str) -> None:
        self.etag = etag


def test_every_answer_must_carry_the_first_etag() -> None:
    v = ObjectVersions(RuntimeError)
    v.check("a", "s3://b/a", Handle('"1"'))
    v.check("a", "s3://b/a", Handle('"1"'))
    v.check("b", "s3://b/b", Handle('"2"'))  # objects are independent
    with pytest.raises(RuntimeError, match=r'^s3://b/a item x: the object was replaced .*ETag "1" .* "3" now'):
        v.check("a", "s3://b/a item x", Handle('"3"'))


def test_expected_versions_and_answers_without_an_etag() -> None:
    v = ObjectVersions(ValueError)
    v.expect("a", '"1"')
    v.expect("b", "")  # a server that sends none: nothing to hold later answers to
    v.check("a", "a", Handle(""))
    v.check("b", "b", Handle('"9"'))
    with pytest.raises(ValueError):
        v.check("a", "a", Handle('"2"'))


def test_versions_another_process_read_are_held_like_ones_own() -> None:
    """Shared reads: the ETag another rank's fetch answered with (agree) and this rank's own
    answers are one rule, whichever came first."""
    v = ObjectVersions(RuntimeError)
    v.agree("a", "s3://b/a", '"1"')  # another rank fetched first
    v.check("a", "s3://b/a", Handle('"1"'))
    with pytest.raises(RuntimeError, match="replaced while this load read it"):
        v.check("a", "s3://b/a", Handle('"2"'))
    v.check("c", "s3://b/c", Handle('"5"'))  # this rank read first
    with pytest.raises(RuntimeError, match=r'ETag "5" at its first read, "6" now'):
        v.agree("c", "s3://b/c", '"6"')
    v.agree("c", "s3://b/c", "")  # a fetch without an ETag holds nothing


def test_the_first_version_is_what_a_later_get_is_held_to() -> None:
    v = ObjectVersions(RuntimeError)
    assert v.first("a") == ""
    v.check("a", "s3://b/a", Handle('"1"'))
    assert v.first("a") == '"1"'
    err = v.refused("s3://b/a item x", Exception("HTTP 412"))
    assert isinstance(err, RuntimeError) and "s3://b/a item x: the object was replaced" in str(err)

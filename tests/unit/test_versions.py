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

"""Outside text shown (python/s3torch/_text.py): whatever a key, a checkpoint or a server
holds, what s3torch prints of it is printable, one field per line, and unchanged where it
already was printable; the messages of s3torch's exceptions, raised in Python or in the core,
are shown so, while their attributes keep the text as it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from s3torch import S3Exception, S3NotFoundError
from s3torch._text import shown, shown_lines
from s3torch.dcp import CheckpointCorruptError, StagingError
from s3torch.safetensors import HeaderError

HOSTILE = "k\x1b]0;owned\x07\x1b[2J\r\u202egnp.exe\u200b\x85\ufeff"


@given(st.text())
def test_shown_is_printable_and_leaves_printable_text_alone(text: str) -> None:
    out = shown(text)
    assert out.isprintable()
    assert (out == text) == text.isprintable()
    lines = shown_lines(text)
    assert lines.split("\n") == [shown(line) for line in text.split("\n")]


def test_the_hostile_characters_are_escaped_as_ascii_spells_them() -> None:
    assert shown(HOSTILE) == r"k\x1b]0;owned\x07\x1b[2J\r\u202egnp.exe\u200b\x85\ufeff"
    assert shown("a\nb") == r"a\nb" and shown_lines("a\nb\x1b") == "a\nb\\x1b"
    assert shown("naïve 模型 🚀") == "naïve 模型 🚀"


def test_exception_messages_are_shown_and_attributes_kept() -> None:
    for cls in (S3Exception, S3NotFoundError, CheckpointCorruptError, HeaderError, StagingError):
        e = cls(f"tensor {HOSTILE!s} is bad\nsecond line")
        assert str(e) == f"tensor {shown(HOSTILE)} is bad\nsecond line", cls
        assert e.args[0] == f"tensor {HOSTILE} is bad\nsecond line"

"""Outside text made safe to show: the one rule for what s3torch prints or puts in a message.

A key, a checkpoint's tensor names and file paths, a server's error message and the dates
and ids in its answers are outside text: any string their writer chose. Shown raw, an escape
sequence in one drives the terminal that shows it (changes its title, clears it, on some
terminals worse), a carriage return or a bidirectional override hides what is really there,
and a newline forges a line of ``s3torch ls`` for whatever reads it. So every character that
``str.isprintable`` refuses (controls, format characters such as the bidirectional ones, line
and paragraph separators, surrogates, unassigned code points) is shown as its escape, as
``repr`` writes it (``\\x1b``, ``\\u202e``), and the text is otherwise left as it is.

The core escapes its own messages the same way (``s3torch::printable``); the messages of
s3torch's exceptions raised in Python go through :func:`message` (``S3Exception.__str__``,
set by the package's ``__init__``).
"""

from __future__ import annotations


def shown(text: str) -> str:
    """``text`` with every character that is not printable written as its escape (a newline
    too: one field, one line)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def shown_lines(text: str) -> str:
    """``text`` shown line by line: its newlines kept (a message may have lines)."""
    if text.isprintable():
        return text
    return "\n".join(shown(line) for line in text.split("\n"))


def message(exc: BaseException) -> str:
    """The message of an s3torch exception, shown (``S3Exception.__str__``)."""
    return shown_lines(BaseException.__str__(exc))

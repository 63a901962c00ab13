"""Paging through ListObjectsV2: the one loop every listing of s3torch goes through.

A page that is truncated names the token of the next one (the core refuses a truncated page
without one). A server or gateway that ignores ``continuation-token`` answers every request
with its first page and the same token again; followed blindly, a listing (a dataset's, ``ls``,
``cp``, a safetensors folder) would never end and would grow until memory ran out. A token the
listing already followed is therefore refused: paging must move on. So is a page that lists a
key one of the pages just before it listed: a server that hands out a fresh token with every
page but answers the same keys would list forever (and a dataset would hold keys twice).
(Key order is not checked: S3 lists keys in binary order, but other servers do not; SeaweedFS
walks its directories, listing ``a/b`` before ``a-c``.)

Every key and common prefix a page lists must start with the prefix asked for, as S3's do:
every caller takes ``key[len(prefix):]`` as the name below the prefix, and a key that is not
under it would give a wrong name (a file copied down under another path, a checkpoint's file
taken for missing). A server that normalises keys does that: SeaweedFS stores ``run//ckpt/x``
as ``run/ckpt/x`` and lists it under the prefix ``run//``. Such a page is refused, saying so.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Deque, Iterator, List, Set, Tuple

from . import _crt

# Pages whose keys a new page is checked against.
REPEAT_WINDOW = 8


def pages(
    native: "_crt.NativeClient", bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000
) -> Iterator["_crt.ListPage"]:
    """Yield the ListObjectsV2 pages of ``bucket/prefix``, following continuation tokens;
    ``S3Exception`` when the server hands back a token this listing has already followed, or a
    page lists a key that one of the ``REPEAT_WINDOW`` pages before it listed."""
    token = ""
    followed: Set[str] = set()
    recent: Deque[Tuple[int, Set[str]]] = deque(maxlen=REPEAT_WINDOW)  # (page number, its keys)
    while True:
        page = native.list_objects(bucket, prefix, delimiter, max_keys, token)
        token = page.next_continuation_token if page.is_truncated else ""
        if token in followed:
            raise _crt.S3Exception(
                f"ListObjectsV2 s3://{bucket}/{prefix}: the server answered with the continuation token "
                f"{token[:64]!r} again, after {len(followed) + 1} pages: its paging does not advance (does it "
                "ignore ListObjectsV2's continuation-token?), and following it would never end"
            )
        keys = {o.key for o in page.object_info}
        _check_under(bucket, prefix, keys, page.common_prefixes)
        number = len(followed) + 1
        for before, seen in recent:
            again = keys & seen
            if again:
                raise _crt.S3Exception(
                    f"ListObjectsV2 s3://{bucket}/{prefix}: page {number} lists {min(again)[:200]!r} again (page "
                    f"{before} listed it): the server repeats keys under new continuation tokens, and following "
                    "it could list forever"
                )
        recent.append((number, keys))
        yield page
        if not token:
            return
        followed.add(token)


def _check_under(bucket: str, prefix: str, keys: Set[str], common_prefixes: List[str]) -> None:
    """S3Exception for a key or common prefix of a page that is not under ``prefix``."""
    if not prefix:
        return
    for k in itertools.chain(keys, common_prefixes):
        if not k.startswith(prefix):
            why = (
                ' (a server that normalises "//" in keys, as SeaweedFS does, lists them without it: name the '
                'prefix without "//")'
                if "//" in prefix
                else ""
            )
            raise _crt.S3Exception(
                f"ListObjectsV2 s3://{bucket}/{prefix}: the server listed {k[:200]!r}, which is not under the prefix "
                f"asked for{why}"
            )

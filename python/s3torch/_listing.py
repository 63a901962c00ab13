"""Paging through ListObjectsV2: the one loop every listing of s3torch goes through.

A page that is truncated names the token of the next one (the core refuses a truncated page
without one). A server or gateway that ignores ``continuation-token`` answers every request
with its first page and the same token again; followed blindly, a listing (a dataset's, ``ls``,
``cp``, a safetensors folder) would never end and would grow until memory ran out. A token the
listing already followed is therefore refused: paging must move on. So is a page whose keys do
not all come after the previous page's: S3 lists keys in order, so such a server repeats keys
(a dataset would hold them twice) or, with a fresh token on every page, never ends.
"""

from __future__ import annotations

from typing import Iterator, Set

from . import _crt


def pages(
    native: "_crt.NativeClient", bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000
) -> Iterator["_crt.ListPage"]:
    """Yield the ListObjectsV2 pages of ``bucket/prefix``, following continuation tokens;
    ``S3Exception`` when the server hands back a token this listing has already followed, or a
    page of keys that do not all come after the previous page's."""
    token = ""
    followed: Set[str] = set()
    last = None  # the last key of the pages so far
    while True:
        page = native.list_objects(bucket, prefix, delimiter, max_keys, token)
        token = page.next_continuation_token if page.is_truncated else ""
        if token in followed:
            raise _crt.S3Exception(
                f"ListObjectsV2 s3://{bucket}/{prefix}: the server answered with the continuation token "
                f"{token[:64]!r} again, after {len(followed) + 1} pages: its paging does not advance (does it "
                "ignore ListObjectsV2's continuation-token?), and following it would never end"
            )
        keys = [o.key for o in page.object_info]
        if keys and last is not None and min(keys) <= last:
            raise _crt.S3Exception(
                f"ListObjectsV2 s3://{bucket}/{prefix}: page {len(followed) + 1} lists {min(keys)[:200]!r}, which "
                f"is not after the last key of the page before ({last[:200]!r}): the server repeats keys or "
                "goes back, and S3 lists each key once, in order"
            )
        last = max(keys, default=last)
        yield page
        if not token:
            return
        followed.add(token)

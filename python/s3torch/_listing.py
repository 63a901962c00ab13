"""Paging through ListObjectsV2: the one loop every listing of s3torch goes through.

A page that is truncated names the token of the next one (the core refuses a truncated page
without one). A server or gateway that ignores ``continuation-token`` answers every request
with its first page and the same token again; followed blindly, a listing (a dataset's, ``ls``,
``cp``, a safetensors folder) would never end and would grow until memory ran out. A token the
listing already followed is therefore refused: paging must move on.
"""

from __future__ import annotations

from typing import Iterator, Set

from . import _crt


def pages(
    native: "_crt.NativeClient", bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000
) -> Iterator["_crt.ListPage"]:
    """Yield the ListObjectsV2 pages of ``bucket/prefix``, following continuation tokens;
    ``S3Exception`` when the server hands back a token this listing has already followed."""
    token = ""
    followed: Set[str] = set()
    while True:
        page = native.list_objects(bucket, prefix, delimiter, max_keys, token)
        yield page
        if not page.is_truncated:
            return
        token = page.next_continuation_token
        if token in followed:
            raise _crt.S3Exception(
                f"ListObjectsV2 s3://{bucket}/{prefix}: the server answered with the continuation token "
                f"{token[:64]!r} again, after {len(followed) + 1} pages: its paging does not advance (does it "
                "ignore ListObjectsV2's continuation-token?), and following it would never end"
            )
        followed.add(token)

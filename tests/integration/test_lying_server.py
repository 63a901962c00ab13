"""A server that lies: a tiny HTTP server on 127.0.0.1 answering S3 requests with bodies
longer or shorter than asked, wrong Content-Range, Content-Length short of the body, HEAD
disagreeing with GET, malformed XML, negative sizes and huge key counts. Every case ends in a
typed s3torch error (or, where the lie is harmless, the right bytes), the guard bytes around
the destination buffer are intact, and the process is alive."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, Tuple
from urllib.parse import unquote

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception, S3PermissionError
from tests.faults.guards import guarded, guards_intact
from tests.faults.serving import serving

BUCKET = "lies"
SIZE = 4096
DATA = bytes((i * 7 + 3) & 0xFF for i in range(SIZE))
DEEP = b"<a>" * 20_000 + b"</a>" * 20_000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: Tuple[Tuple[str, str], ...] = (), length: Any = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("x-amz-request-id", "LIAR")
        if length is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _range(self) -> Tuple[int, int]:
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        return (int(m.group(1)), int(m.group(2))) if m else (0, SIZE - 1)

    def do_HEAD(self) -> None:
        key = self.path.split("?")[0].split("/", 2)[-1]
        if key == "head_lies":
            self._send(200, b"", (("ETag", '"e"'),), length=SIZE * 4)
        elif key == "bad_etag":
            self._send(200, b"", (("ETag", '"\xff"'),), length=SIZE)
        elif key == "negative_head":
            self._send(200, b"", (("ETag", '"e"'),), length=-5)
        else:
            self._send(200, b"", (("ETag", '"e"'),), length=SIZE)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if "list-type=2" in query:
            return self._list(query)
        if query.endswith("uploads="):
            return self._uploads(query)
        key = path.split("/", 2)[-1]
        a, b = self._range()
        b = min(b, SIZE - 1)
        want = DATA[a : b + 1]
        cr = (("Content-Range", f"bytes {a}-{b}/{SIZE}"), ("ETag", '"e"'))
        if key == "longer":  # more bytes than the range asked for, Content-Length agreeing
            self._send(206, want + b"X" * 100, cr)
        elif key == "wrong_range":  # the bytes of another range, labelled as such
            shifted = DATA[a + 5 : b + 6]
            self._send(206, shifted, (("Content-Range", f"bytes {a + 5}-{a + 5 + len(shifted) - 1}/{SIZE}"),))
        elif key == "mislabelled":  # the right length, a Content-Range that does not match it
            self._send(206, want, (("Content-Range", f"bytes 0-{SIZE * 8}/{SIZE}"),))
        elif key == "short_body":  # Content-Length says what was asked, the body stops early
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{SIZE}")
            self.send_header("Content-Length", str(len(want)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(want[: len(want) // 2])
            self.close_connection = True
        elif key == "cl_short_of_body":  # Content-Length short of the body that follows
            self._send(206, want, cr, length=max(0, len(want) - 10))
        elif key == "head_lies":  # HEAD said 4x the size; GET has SIZE bytes
            self._send(206, want, cr)
        elif key == "whole_object":  # a 200 with the whole object for a ranged request
            self._send(200, DATA, (("ETag", '"e"'),))
        elif key == "escapes_error":  # an error whose message is UTF-8 full of terminal escapes
            body = "<Error><Code>AccessDenied</Code><Message>no \x1b]0;owned\x07\x1b[2J\u202e</Message></Error>"
            self._send(403, body.encode("utf-8"))
        elif key == "bad_etag":  # an ETag header that is not printable ASCII
            self._send(206, want, (("Content-Range", f"bytes {a}-{b}/{SIZE}"), ("ETag", '"\xff"')))
        elif key == "huge_total":  # the range asked for, in an object of 2**63 bytes (none is)
            a, b = self._range()
            self._send(206, bytes(b - a + 1), (("Content-Range", f"bytes {a}-{b}/{2**63}"), ("ETag", '"e"')))
        elif key == "deep_error":  # an error nesting 20,000 elements (140 KB)
            self._send(404, b"<Error><Code>NoSuchKey</Code>" + DEEP + b"</Error>")
        elif key == "bad_text_error":  # an error whose message is not UTF-8, with terminal escapes
            body = "<Error><Code>AccessDenied</Code><Message>no \udcff\x1b]0;owned\x07\x1b[2J</Message></Error>"
            self._send(403, body.encode("utf-8", "surrogateescape"))
        else:
            self._send(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")

    def _uploads(self, query: str) -> None:
        """ListMultipartUploads: "alternate" names markers a and b in turn, "same" a every
        time; "nomarker" is truncated and names none."""
        prefix = re.search(r"prefix=([^&]*)", query)
        p = unquote(prefix.group(1)) if prefix else ""
        marker = re.search(r"key-marker=([^&]*)", query)
        nxt = "" if p == "nomarker" else ("b" if p == "alternate" and marker and marker.group(1) == "a" else "a")
        body = (
            "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>"
            f"<NextKeyMarker>{nxt}</NextKeyMarker><NextUploadIdMarker>{nxt and 'id'}</NextUploadIdMarker>"
            f"<Upload><Key>{p}/k</Key><UploadId>u</UploadId><Initiated>2026-12-01T00:00:00Z</Initiated></Upload>"
            "</ListMultipartUploadsResult>"
        )
        self._send(200, body.encode(), (("Content-Type", "application/xml"),))

    def _list(self, query: str) -> None:
        prefix = re.search(r"prefix=([^&]*)", query)
        p = unquote(prefix.group(1)).rstrip("/") if prefix else ""
        head = '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>lies</Name>'
        if p == "malformed":
            body = head + "<Contents><Key>a</Key><Size>1</Contents></ListBucketResult"
        elif p == "negative":
            body = head + "<Contents><Key>negative/a</Key><Size>-5</Size></Contents></ListBucketResult>"
        elif p == "notanumber":
            body = head + "<Contents><Key>notanumber/a</Key><Size>12abc</Size></Contents></ListBucketResult>"
        elif p == "overflow":
            body = (
                head
                + "<Contents><Key>overflow/a</Key><Size>99999999999999999999999</Size></Contents></ListBucketResult>"
            )
        elif p == "huge":  # many keys in one page, and a KeyCount that lies
            items = "".join(f"<Contents><Key>huge/{i:07d}</Key><Size>{i}</Size></Contents>" for i in range(50_000))
            body = head + "<KeyCount>999999999999999999999</KeyCount>" + items + "</ListBucketResult>"
        elif p == "fresh_tokens":  # the same page on every request, under a new token each time
            n = int(re.search(r"continuation-token=t(\d+)", query).group(1)) if "continuation-token" in query else 0
            body = (
                head + f"<IsTruncated>true</IsTruncated><NextContinuationToken>t{n + 1}</NextContinuationToken>"
                "<Contents><Key>fresh_tokens/a</Key><Size>1</Size></Contents></ListBucketResult>"
            )
        elif p == "deep":  # a listing whose one key nests 20,000 elements
            body = head + "<Contents><Key>deep/a</Key><Size>1</Size>" + DEEP.decode() + "</Contents></ListBucketResult>"
        elif p == "selfclosing":  # an empty listing written as one self-closing element
            body = '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult/>'
        elif p == "garbage":
            body = "\x00\xff not xml at all <<<>>>"
        elif p == "badutf8":  # a key that is not UTF-8 (S3 keys always are)
            body = head + "<Contents><Key>badutf8/\udcff\udcfe</Key><Size>1</Size></Contents></ListBucketResult>"
        elif p == "escapes":  # keys (UTF-8, as S3 allows) that would drive a terminal or forge a line
            keys = [
                "escapes/\x1b]0;owned\x07\x1b[2J",
                "escapes/a\n2026-01-01 00:00:00          1 forged",
                "escapes/\u202egnp.exe",
            ]
            body = head + "".join(
                f"<Contents><Key>{k}</Key><Size>1</Size><LastModified>2026-12-01T00:00:00.000Z\x1b[5m</LastModified></Contents>"
                for k in keys
            )
            body += "</ListBucketResult>"
        elif p == "notoken":  # truncated, and no token to ask for the rest with
            body = head + "<IsTruncated>true</IsTruncated><Contents><Key>notoken/a</Key><Size>1</Size></Contents>"
            body += "</ListBucketResult>"
        elif p == "outside":  # keys and a common prefix not under the prefix asked for
            body = (
                head + "<IsTruncated>false</IsTruncated><Contents><Key>elsewhere/secret</Key><Size>1</Size></Contents>"
                "<CommonPrefixes><Prefix>elsewhere/</Prefix></CommonPrefixes></ListBucketResult>"
            )
        elif p == "loop":  # ignores continuation-token: the first page again, the same token again
            body = (
                head + "<IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>"
                "<Contents><Key>loop/a</Key><Size>1</Size></Contents></ListBucketResult>"
            )
        else:
            body = head + "<IsTruncated>false</IsTruncated></ListBucketResult>"
        self._send(200, body.encode("utf-8", "surrogateescape"), (("Content-Type", "application/xml"),))


@pytest.fixture(scope="module")
def liar() -> Iterator[S3Client]:
    cfg = S3ClientConfig(
        force_path_style=True, access_key_id="k", secret_access_key="s", max_attempts=2, retry_timeout_s=0
    )
    with serving(_Handler) as url:
        yield S3Client("us-east-1", endpoint=url, s3client_config=cfg)


@pytest.mark.parametrize(
    "key", ["longer", "wrong_range", "mislabelled", "short_body", "cl_short_of_body", "head_lies", "whole_object"]
)
@pytest.mark.parametrize("offset,length", [(0, 1000), (100, 1000), (0, SIZE)])
def test_get_into_caller_memory(liar: S3Client, key: str, offset: int, length: int) -> None:
    native = liar._get_native()
    buf, view = guarded(length)
    try:
        got = native.get_into(BUCKET, key, view, offset, length)
    except S3Exception as e:
        assert str(e), key  # typed, with a message
    else:  # accepted: only if what landed is exactly the asked-for bytes
        assert got == length and bytes(view) == DATA[offset : offset + length], (key, got)
    view.release()
    assert guards_intact(buf), key


@pytest.mark.parametrize(
    "key", ["longer", "wrong_range", "short_body", "cl_short_of_body", "head_lies", "whole_object"]
)
def test_get_bytes_and_streams(liar: S3Client, key: str) -> None:
    native = liar._get_native()
    for call in (
        lambda: native.get_bytes(BUCKET, key, 10, 500),
        lambda: liar.get_object(BUCKET, key).read(),
        lambda: liar.get_object(BUCKET, key).read(SIZE * 4),
    ):
        try:
            data = call()
        except S3Exception:
            continue
        except OSError as e:  # readers raise through io; still s3torch's family underneath
            assert isinstance(e.__cause__ or e.__context__ or e, S3Exception) or isinstance(e, S3Exception), e
            continue
        assert data in (DATA[10:510], DATA), (key, len(data))


def test_head_disagreeing_with_get(liar: S3Client) -> None:
    info = liar._get_native().head(BUCKET, "head_lies")
    assert info.size == SIZE * 4
    buf, view = guarded(SIZE * 4)
    try:  # the range past the object's end: the bytes that exist, counted as such, or an error
        got = liar._get_native().get_into(BUCKET, "head_lies", view, 0, SIZE * 4)
    except S3Exception:
        pass
    else:
        assert got == SIZE and bytes(view[:SIZE]) == DATA
    view.release()
    assert guards_intact(buf)
    # A reader sized by the lying HEAD ends in an error or in the bytes that exist, never past them.
    try:
        data = liar.get_object(BUCKET, "head_lies").read()
    except (S3Exception, OSError):
        pass
    else:
        assert data == DATA


def test_negative_content_length_on_head(liar: S3Client) -> None:
    # The CRT's HTTP parser refuses it first (a protocol error); objects.cpp would too.
    with pytest.raises(S3Exception, match="PROTOCOL_ERROR|not a byte count"):
        liar._get_native().head(BUCKET, "negative_head")


@pytest.mark.parametrize("prefix", ["malformed", "negative", "notanumber", "overflow", "garbage", "notoken"])
def test_list_bodies_that_lie(liar: S3Client, prefix: str) -> None:
    with pytest.raises(S3Exception) as info:
        list(liar.list_objects(BUCKET, prefix))
    assert "ListObjectsV2" in str(info.value)


def test_list_paging_that_never_advances(liar: S3Client, tmp_path: Any) -> None:
    """A server (or gateway) that ignores ``continuation-token`` answers every page with the
    first page and the same token: paging on would never end, and a listing (a dataset, ``ls``,
    ``cp``, a safetensors folder) would grow until memory ran out. It is refused at the second
    answer naming the token."""
    from s3torch import S3MapDataset
    from s3torch.safetensors import load_file

    with pytest.raises(S3Exception, match="continuation token 't1' .*again"):
        list(liar.list_objects(BUCKET, "loop"))
    with pytest.raises(S3Exception, match="again"):
        S3MapDataset.from_prefix(
            f"s3://{BUCKET}/loop/", region="us-east-1", endpoint=liar.endpoint, s3client_config=liar.s3client_config
        )[0]
    with pytest.raises(Exception, match="again"):
        load_file(f"s3://{BUCKET}/loop/", client=liar)


_DEEP_CHILD = """
import sys
from s3torch import S3Client, S3ClientConfig, S3Exception
cfg = S3ClientConfig(force_path_style=True, access_key_id="k", secret_access_key="s", max_attempts=1, retry_timeout_s=0)
c = S3Client("us-east-1", endpoint=sys.argv[1], s3client_config=cfg)
for call in (lambda: c.get_object("lies", "deep_error").read(), lambda: list(c.list_objects("lies", "deep"))):
    try:
        call()
    except S3Exception as e:
        print(type(e).__name__, str(e))
"""


def test_deeply_nested_xml_gets_typed_errors(liar: S3Client) -> None:
    """Error and listing bodies nesting 20,000 elements (140 KB). Before, each level was
    parsed again as a document of its own, recursing once per level: the process died of a
    stack overflow (SIGSEGV) on a 404. Now a document deeper than any S3 answer is refused.
    The client runs as a process of its own, so a crash fails this test, not the suite."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _DEEP_CHILD, liar.endpoint], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert lines[0].startswith("S3NotFoundError GetObject s3://lies/deep_error: NoSuchKey (HTTP 404, "), lines
    assert lines[1] == "S3Exception ListObjectsV2 s3://lies: the response is not valid UTF-8 XML", lines


def test_list_paging_that_repeats_keys_under_new_tokens(liar: S3Client) -> None:
    """A server that answers every page with the same keys and a token it has not given before:
    the token check cannot see it, and before, a listing never ended (a dataset of the prefix
    grew until memory ran out). Keys must come after the previous page's. (At most 50 pages
    are asked for, so the old behaviour fails this test rather than hanging it.)"""
    import itertools

    with pytest.raises(S3Exception, match=r"page 2 lists 'fresh_tokens/a' again \(page 1 listed it\)"):
        list(itertools.islice(liar.list_objects(BUCKET, "fresh_tokens"), 50))


def test_upload_listing_that_does_not_advance(liar: S3Client) -> None:
    """ListMultipartUploads (``s3torch uploads``, a DCP save's clean-up of its own uploads)
    answered with markers that take turns, or a truncated page without any. Before, the first
    listed forever with the GIL released (Ctrl-C could not stop it), the second stopped
    without saying the list was cut short."""
    with pytest.raises(S3Exception, match="page 3 names markers \\('a', 'id'\\) it gave before"):
        liar.list_multipart_uploads(BUCKET, "alternate")
    with pytest.raises(S3Exception, match="page 2 names markers \\('a', 'id'\\) it gave before"):
        liar.list_multipart_uploads(BUCKET, "same")
    with pytest.raises(S3Exception, match="page 1 is truncated but names no NextKeyMarker"):
        liar.list_multipart_uploads(BUCKET, "nomarker")


def test_a_size_no_object_has_is_a_typed_error(liar: S3Client) -> None:
    """A whole read whose first answer says the object is 2**63 bytes: before, Python's
    SystemError (a negative size handed to the bytes constructor)."""
    with pytest.raises(S3Exception, match="huge_total: the server gives the object a size of 9223372036854775808"):
        liar.get_object(BUCKET, "huge_total").read()


def test_text_that_is_not_utf8_gets_typed_errors(liar: S3Client) -> None:
    """A listing key or an error message that is not UTF-8 (S3's never are): before, a
    UnicodeDecodeError (where an S3PermissionError was due, or on reading a listed key); a
    header that is not printable ASCII is taken as absent."""
    with pytest.raises(S3Exception, match="not valid UTF-8 XML"):
        [o.key for page in liar.list_objects(BUCKET, "badutf8") for o in page.object_info]
    with pytest.raises(S3PermissionError) as info:
        liar.get_object(BUCKET, "bad_text_error").read()
    assert info.value.http_status == 403 and info.value.code == "AccessDenied"
    assert liar._get_native().head(BUCKET, "bad_etag").etag == ""
    assert liar.get_object(BUCKET, "bad_etag").read() == DATA


def test_outside_text_is_shown_escaped(liar: S3Client, monkeypatch: Any, capsys: Any) -> None:
    """Keys, dates and server messages that hold terminal escapes, a newline or a
    bidirectional override: ``s3torch ls`` and every exception's message show them escaped
    (one key, one line); the exception's ``key`` stays the key."""
    from s3torch.cli import main

    with pytest.raises(S3PermissionError) as info:
        liar.get_object(BUCKET, "escapes_error").read()
    text = str(info.value)
    assert "\x1b" not in text and "\u202e" not in text, text
    assert (
        "no \\x1b]0;owned\\x07\\x1b[2J\\u202e" in text
        and info.value.s3_message == "no \\x1b]0;owned\\x07\\x1b[2J\\u202e"
    )
    key = "escapes/\x1b[31m\r\n"
    with pytest.raises(S3Exception) as info:
        liar.get_object(BUCKET, key).read()
    assert info.value.key == key and "escapes/\\x1b[31m\\r\\n" in str(info.value), str(info.value)

    monkeypatch.setenv("AWS_ENDPOINT_URL", liar.endpoint or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert main(["ls", f"s3://{BUCKET}/escapes/"]) == 0
    out = capsys.readouterr().out
    assert out.isprintable() is False and all(line.isprintable() for line in out.splitlines())
    assert len(out.splitlines()) == 3, out
    assert "\\x1b]0;owned\\x07\\x1b[2J" in out and "a\\n2026-01-01" in out and "\\u202egnp.exe" in out
    assert "2026-12-01 00:00:00" in out and "[5m" not in out.replace("\\x1b[5m", "")


def test_a_listing_of_keys_outside_the_prefix_is_refused(liar: S3Client) -> None:
    """Every caller takes ``key[len(prefix):]`` as the name under the prefix: a key outside it
    would be a wrong name (a file copied down under another path)."""
    for delimiter in ("", "/"):
        with pytest.raises(S3Exception, match="listed 'elsewhere/secret', which is not under the prefix"):
            list(liar.list_objects(BUCKET, "outside/", delimiter))


def test_a_self_closing_listing_is_an_empty_one(liar: S3Client) -> None:
    (page,) = list(liar.list_objects(BUCKET, "selfclosing"))
    assert page.object_info == [] and page.common_prefixes == []


def test_huge_key_count(liar: S3Client) -> None:
    (page,) = list(liar.list_objects(BUCKET, "huge"))
    assert len(page.object_info) == 50_000
    assert page.object_info[-1].key == "huge/0049999" and page.object_info[-1].size == 49_999


def test_cp_down_from_a_liar_writes_nothing(liar: S3Client, tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    from s3torch.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", liar.endpoint or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    for prefix in ("negative", "malformed", "outside"):
        dst = tmp_path / prefix
        code = main(["cp", f"s3://{BUCKET}/{prefix}", str(dst)])
        assert code == 4, capsys.readouterr().err
        assert not dst.exists()

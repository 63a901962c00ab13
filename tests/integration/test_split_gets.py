"""A ranged GET of more than a part goes as pieces of at most a part each, every one started at
once (get.h, GetInto::start_split): no piece waits for another's answer, as the CRT's own
ranged GET waits for its first part's. Against a small HTTP server on 127.0.0.1 that holds
every answer until all the pieces have arrived (a GET that sent its pieces one after another
would time out there), and that can answer a piece of another version or size, or an error:
each ends in the right bytes or a typed error, with the guard bytes around the caller's
buffer intact."""

from __future__ import annotations

import mmap
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, List, Tuple

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception, S3ObjectChangedError
from tests.faults.guards import guarded, guards_intact

MiB = 1 << 20
PART = 5 * MiB  # the client's part size (S3's minimum)
SIZE = 17 * MiB + 12345  # four parts' worth
DATA = bytes((i * 131 + 7) & 0xFF for i in range(SIZE))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        key = self.path.split("?")[0].split("/", 2)[-1]
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        assert m, "every GET here is ranged"
        start, end = int(m.group(1)), int(m.group(2))
        self.server.arrived(key, start)
        etag = '"v1"'
        if key == "versions" and start > 0:
            etag = '"v2"'  # replaced after the first piece was answered
        if key == "fails" and start > 0:
            body = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if start >= SIZE:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{SIZE}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        end = min(end, SIZE - 1)
        body = DATA[start : end + 1]
        size = SIZE
        if key == "resized" and start > 0:
            size = SIZE + 1  # the same ETag, another size: not the object the first piece read
        self.send_response(206)
        self.send_header("ETag", etag)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cv = threading.Condition()
        self.expect = 0  # answers are held until this many GETs have arrived (0: not held)
        self.starts: List[Tuple[str, int]] = []
        self.all_arrived = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # an answer to a cancelled piece finds its connection closed

    def arrived(self, key: str, start: int) -> None:
        with self.cv:
            self.starts.append((key, start))
            self.cv.notify_all()
            if self.expect and not self.cv.wait_for(lambda: len(self.starts) >= self.expect, timeout=5):
                self.all_arrived = False  # a piece waited for another's answer


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def client(server: _Server) -> S3Client:
    server.starts, server.expect, server.all_arrived = [], 0, True
    cfg = S3ClientConfig(
        force_path_style=True, unsigned=True, part_size=PART, max_attempts=1, retry_timeout_s=0, checksums="off"
    )
    return S3Client("us-east-1", endpoint=f"http://127.0.0.1:{server.server_address[1]}", s3client_config=cfg)


@pytest.mark.parametrize(
    "offset,length,pieces",
    [
        (0, PART + 1, 2),  # just over a part: two even pieces, not a part and a byte after it
        (3, 3 * PART, 3),
        (1000, SIZE - 1000, 4),
        (SIZE - 2 * PART - 10, 3 * PART, 3),  # past the end: the last piece is wholly past it
        (SIZE - PART - 1, 2 * PART, 2),  # past the end: the second piece in part
    ],
)
def test_pieces_start_at_once_and_land_in_place(
    server: _Server, client: S3Client, offset: int, length: int, pieces: int
) -> None:
    server.expect = pieces
    buf, view = guarded(length)
    got = client._get_native().get_into("bkt", "whole", view, offset, length)
    want = DATA[offset : offset + length]
    assert got == len(want) and bytes(view[:got]) == want
    assert guards_intact(buf)
    assert server.all_arrived, "a piece was sent only after another was answered"
    starts = sorted(s for _, s in server.starts)
    assert len(starts) == pieces and starts[0] == offset
    # Even pieces, each at most a part: as many requests as the CRT's parts would be.
    sizes = [b - a for a, b in zip(starts, starts[1:] + [offset + length])]
    assert max(sizes) <= PART and max(sizes) - min(sizes) < pieces
    # The bytes object path (fsspec's cat_file, S3Reader reads) takes the same pieces.
    assert client._get_native().get_bytes("bkt", "whole", offset, length) == want


def test_a_range_of_a_part_is_one_get(server: _Server, client: S3Client) -> None:
    assert client._get_native().get_bytes("bkt", "whole", 10, PART) == DATA[10 : 10 + PART]
    assert server.starts == [("whole", 10)]


def test_a_range_far_past_a_small_objects_end_costs_no_storm_of_requests(server: _Server, client: S3Client) -> None:
    """More than 128 parts (a caller's guess at the end): aws-c-s3's ranged GET, whose first part
    tells the object's size before any other starts, not 129 pieces of which 125 are 416s."""
    n = 129 * PART
    with mmap.mmap(-1, n) as mem:  # untouched pages: only what lands takes memory
        view = memoryview(mem)
        try:
            assert client._get_native().get_into("bkt", "whole", view, 0, n) == SIZE
            assert bytes(view[:SIZE]) == DATA
        finally:
            view.release()
    assert sorted(s for _, s in server.starts) == [0, PART, 2 * PART, 3 * PART]


@pytest.mark.parametrize("key", ["versions", "resized"])
def test_pieces_of_different_versions_are_refused(client: S3Client, key: str) -> None:
    buf, view = guarded(3 * PART)
    with pytest.raises(S3ObjectChangedError, match=f"s3://bkt/{key}: the object was replaced .*different versions"):
        client._get_native().get_into("bkt", key, view, 0, 3 * PART)
    assert guards_intact(buf)


def test_a_failed_piece_fails_the_get_with_its_error(client: S3Client) -> None:
    buf, view = guarded(3 * PART)
    with pytest.raises(S3Exception) as e:
        client._get_native().get_into("bkt", "fails", view, 0, 3 * PART)
    assert e.value.http_status == 403 and "s3://bkt/fails" in str(e.value)
    assert guards_intact(buf)


def test_a_range_past_the_end_is_416_as_one_get_is(client: S3Client) -> None:
    with pytest.raises(S3Exception) as e:
        client._get_native().get_bytes("bkt", "whole", SIZE + 1, 3 * PART)
    assert e.value.http_status == 416


def test_cancelled_pieces_end_before_the_handle_does(server: _Server, client: S3Client) -> None:
    server.expect = 99  # held: no answer comes before the cancel
    buf, view = guarded(3 * PART)
    h = client._get_native().start_get_into("bkt", "whole", view, 0, 3 * PART)
    h.cancel()
    with pytest.raises(S3Exception, match="cancelled"):
        h.wait()
    assert h.done()
    assert guards_intact(buf)

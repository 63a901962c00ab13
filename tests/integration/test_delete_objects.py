"""S3Client.delete_objects: DeleteObjects, 1,000 keys a request, on SeaweedFS and moto, and
against a small server of this file that checks each request's XML and Content-MD5 and answers
as told: a key refused, a key refused for a passing reason, a key the answer leaves out, no
DeleteObjects at all, an answer that is not a DeleteResult."""

from __future__ import annotations

import base64
import hashlib
import time
import xml.etree.ElementTree as ET
import zlib
from http.server import BaseHTTPRequestHandler
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import S3Client, S3ClientConfig, S3Exception, S3InvalidArgumentError, S3PermissionError, _crt
from tests.conftest import BUCKET, make_client
from tests.faults.serving import serving

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Every key the server was asked about, by how: ("POST", [keys]) or ("DELETE", key).
SEEN: List[Tuple[str, Any]] = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "FAKE")
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self) -> None:
        SEEN.append(("DELETE", unquote(self.path.split("?")[0].split("/", 2)[-1])))
        self._send(204)

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        bucket = path.strip("/")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if query not in ("delete", "delete="):
            return self._send(400, b"<Error><Code>InvalidRequest</Code></Error>")
        if bucket == "nobatch":
            return self._send(501, b"<Error><Code>NotImplemented</Code><Message>no multi-delete</Message></Error>")
        if bucket == "badrequest":  # a store that takes POST ?delete for something else
            return self._send(400, b"<Error><Code>InvalidRequest</Code></Error>")
        if bucket == "denied":
            return self._send(403, b"<Error><Code>AccessDenied</Code></Error>")
        if bucket.endswith("--x-s3"):  # a directory bucket: a CRC32, never an MD5
            crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
            if self.headers.get("x-amz-checksum-crc32") != crc or "Content-MD5" in self.headers:
                return self._send(400, b"<Error><Code>InvalidRequest</Code></Error>")
        elif self.headers.get("Content-MD5") != base64.b64encode(hashlib.md5(body).digest()).decode():
            return self._send(400, b"<Error><Code>BadDigest</Code></Error>")
        doc = ET.fromstring(body)
        keys = [o.find(NS + "Key").text or "" for o in doc.findall(NS + "Object")]
        SEEN.append(("POST", keys))
        if bucket == "garbage":
            return self._send(200, b"<Other><Deleted><Key>a</Key></Deleted></Other>")
        if bucket == "quiet":  # answers as if asked to be quiet (naming no key), deleting nothing
            return self._send(200, b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult/>')
        out = ET.Element("DeleteResult")
        for k in keys:
            if k.startswith("omitted"):
                continue
            if k.startswith("denied") or k.startswith("flaky"):
                e = ET.SubElement(out, "Error")
                ET.SubElement(e, "Key").text = k
                ET.SubElement(e, "Code").text = "AccessDenied" if k.startswith("denied") else "InternalError"
                ET.SubElement(e, "Message").text = "told so"
            elif k.startswith("gone"):  # a server that calls a missing key an error
                e = ET.SubElement(out, "Error")
                ET.SubElement(e, "Key").text = k
                ET.SubElement(e, "Code").text = "NoSuchKey"
            else:
                ET.SubElement(ET.SubElement(out, "Deleted"), "Key").text = k
        self._send(200, ET.tostring(out, encoding="utf-8"))


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serving(_Handler) as url:
        yield url


@pytest.fixture
def fake(fake_url: str) -> S3Client:
    SEEN.clear()
    cfg = S3ClientConfig(force_path_style=True, access_key_id="k", secret_access_key="s", max_attempts=1)
    return S3Client("us-east-1", endpoint=fake_url, s3client_config=cfg)


def test_keys_reach_the_server_as_they_are_in_batches_of_the_limit(fake: S3Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_crt, "MAX_DELETE_KEYS", 3)
    keys = ["a&b", "<c>", "]]>", "q\"'", "line\r\nfeed\ttab", "é/ü/😀", "  spaced  ", "plain"]
    counted: List[int] = []
    assert fake.delete_objects("b", keys, counted.append) == []
    posts = [k for how, k in SEEN if how == "POST"]
    assert [len(p) for p in sorted(posts, key=len, reverse=True)] == [3, 3, 2]
    assert sorted(k for p in posts for k in p) == sorted(keys)  # XML parsers keep \r, \t as sent
    assert sum(counted) == len(keys)


def test_a_directory_bucket_gets_a_crc32_not_an_md5(fake: S3Client) -> None:
    assert fake.delete_objects("dir--usw2-az1--x-s3", ["a", "b"]) == []
    assert SEEN == [("POST", ["a", "b"])]  # taken as one request: no key went alone


def test_keys_from_an_iterator_go_a_request_at_a_time_while_it_runs(fake: S3Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_crt, "MAX_DELETE_KEYS", 2)

    def listing() -> Iterator[str]:
        yield from ("a", "b")
        deadline = time.monotonic() + 10
        while not SEEN and time.monotonic() < deadline:  # the first request goes before the rest is listed
            time.sleep(0.01)
        assert SEEN == [("POST", ["a", "b"])]
        yield from ("c", "d", "e")

    assert fake.delete_objects("b", listing()) == []
    assert sorted(k for _, p in SEEN for k in p) == ["a", "b", "c", "d", "e"]


def test_a_listing_that_fails_part_way_stops_the_deletes(fake: S3Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_crt, "MAX_DELETE_KEYS", 2)

    def listing() -> Iterator[str]:
        yield from ("a", "b", "c")
        raise S3Exception("ListObjectsV2: the connection dropped")

    with pytest.raises(S3Exception, match="connection dropped"):
        fake.delete_objects("b", listing())
    # The full batch may have gone before the error (or been cancelled with it); "c" never goes.
    assert [k for _, p in SEEN for k in p] in ([], ["a", "b"])


def test_a_key_xml_cannot_carry_is_deleted_alone(fake: S3Client) -> None:
    assert fake.delete_objects("b", ["ctl\x01key", "fine", "ffff\uffff"]) == []
    assert sorted(SEEN) == [("DELETE", "ctl\x01key"), ("DELETE", "ffff\uffff"), ("POST", ["fine"])]
    SEEN.clear()
    ((key, error),) = fake.delete_objects("b", ["", "fine"])  # an empty key fails alone
    assert key == "" and isinstance(error, S3InvalidArgumentError) and SEEN == [("POST", ["fine"])]


def test_refused_omitted_and_passing_failures(fake: S3Client) -> None:
    keys = ["ok1", "denied1", "flaky1", "omitted1", "gone1", "ok2"]
    failed = dict(fake.delete_objects("b", keys))
    assert sorted(failed) == ["denied1", "omitted1"]
    denied = failed["denied1"]
    assert isinstance(denied, S3PermissionError) and denied.code == "AccessDenied"  # type: ignore[attr-defined]
    assert denied.key == "denied1" and denied.operation == "DeleteObjects"  # type: ignore[attr-defined]
    assert "DeleteObjects s3://b/denied1: AccessDenied: told so (request id FAKE)" in str(denied)
    assert "names this key neither deleted nor refused" in str(failed["omitted1"])
    # InternalError for one key of a batch: deleted again alone (the client's retries behind it).
    assert ("DELETE", "flaky1") in SEEN and not any(how == "DELETE" and k != "flaky1" for how, k in SEEN)


def test_a_server_without_delete_objects_gets_single_deletes_from_then_on(fake: S3Client) -> None:
    assert fake.delete_objects("nobatch", ["a", "b", "c"]) == []
    assert sorted(SEEN) == [("DELETE", "a"), ("DELETE", "b"), ("DELETE", "c")]
    SEEN.clear()
    assert fake.delete_objects("nobatch", ["d"]) == []
    assert SEEN == [("DELETE", "d")]  # no POST tried again


def test_a_request_refused_for_its_form_has_its_keys_deleted_alone_and_access_is_not_retried(
    fake: S3Client,
) -> None:
    assert fake.delete_objects("badrequest", ["a", "b"]) == []
    assert sorted(SEEN) == [("DELETE", "a"), ("DELETE", "b")]
    assert not fake._single_deletes  # the next request tries DeleteObjects again
    SEEN.clear()
    failed = fake.delete_objects("denied", ["a", "b"])
    assert [k for k, _ in failed] == ["a", "b"] and all(isinstance(e, S3PermissionError) for _, e in failed)
    assert SEEN == []  # refused for access: no key is tried alone


def test_an_answer_that_names_no_key_deletes_none_of_them(fake: S3Client) -> None:
    failed = fake.delete_objects("quiet", ["a", "b"])
    assert [k for k, _ in failed] == ["a", "b"]
    assert all("names this key neither deleted nor refused, so it may still be there" in str(e) for _, e in failed)


def test_an_answer_that_is_no_delete_result_fails_every_key(fake: S3Client) -> None:
    failed = fake.delete_objects("garbage", ["a", "b"])
    assert [k for k, _ in failed] == ["a", "b"]
    assert all("not a DeleteResult" in str(e) for _, e in failed)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_what_xml_can_carry(text: str) -> None:
    # XML 1.0's Char production, as far as UTF-8 text goes: no C0 control but tab, LF, CR,
    # and neither U+FFFE nor U+FFFF; a surrogate cannot be UTF-8 at all.
    allowed = all(
        c in "\t\n\r" or (" " <= c and not "\ud800" <= c <= "\udfff" and c not in "\ufffe\uffff") for c in text
    )
    if any("\ud800" <= c <= "\udfff" for c in text):
        return  # not a str pybind11 can pass as UTF-8: no key can hold it
    assert _crt.xml_can_carry(text) == allowed


def test_delete_objects_on_real_servers(server, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    keys = [f"{prefix}{n}" for n in ("a&b", "<c>", "q\"'", "é ü", "sp ace", "x/y/z", "plain")]
    for k in keys:
        client.put(BUCKET, k, b"1")
    monkeypatch.setattr(_crt, "MAX_DELETE_KEYS", 3)  # three requests
    counted: List[int] = []
    assert client.delete_objects(BUCKET, keys + [prefix + "never-there"], counted.append) == []
    assert sum(counted) == len(keys) + 1
    assert [o.key for page in client.list_objects(BUCKET, prefix) for o in page.object_info] == []


def test_a_control_character_key_on_moto(moto, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(moto)
    key = prefix + "ctl\x01\x1fkey"  # moto stores keys verbatim, as AWS does
    client.put(BUCKET, key, b"1")
    client.put(BUCKET, prefix + "other", b"1")
    assert client.delete_objects(BUCKET, [key, prefix + "other"]) == []
    assert [o.key for page in client.list_objects(BUCKET, prefix) for o in page.object_info] == []


def test_a_thousand_and_one_keys_take_two_requests(server, prefix) -> None:  # type: ignore[no-untyped-def]
    """1,000 keys and one more: two requests, every key named in the answers."""
    client = make_client(server)
    keys: Dict[str, int] = {f"{prefix}k{i:04d}": i for i in range(_crt.MAX_DELETE_KEYS + 1)}
    client.put(BUCKET, prefix + "k0000", b"1")
    assert client.delete_objects(BUCKET, list(keys)) == []
    assert [o.key for page in client.list_objects(BUCKET, prefix) for o in page.object_info] == []

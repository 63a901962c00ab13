"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between an S3 client and a local server.

Each request is read whole (head, then its Content-Length or chunked body) and matched
against the proxy's :class:`Fault` rules, first match first; a matching rule either answers
in the server's place or changes how the server's answer is relayed:

- ``reset``: the client's connection is reset (TCP RST) before any response.
- ``slowdown`` / ``internal_error``: a 503 SlowDown or 500 InternalError with an S3 XML
  error body and a request id (``FAULTPROXY-<n>``); the server never sees the request.
- ``error``: an S3 error document with the rule's ``status`` and ``code`` (what a server says
  of a request it refuses: ``403 RequestTimeTooSkewed``, ``400 ExpiredToken``, ...); the
  server never sees the request.
- ``slow``: the request is held ``delay`` seconds before it goes on (a slow first byte).
- ``truncate``: the server's response head goes through unchanged (its Content-Length
  promises N bytes), then half the body, then the connection closes.
- ``stall``: the request reaches the server, but of its answer only the head and half the
  body go through (nothing at all of an answer without a body), then nothing more, and the
  connection stays open: a peer that died or a path that went silent mid-transfer (no FIN,
  no RST), which only the client's own timeout can end.
- ``corrupt``: one byte in the middle of the request body is flipped on its way to the
  server (what a bad NIC or a buggy middlebox does); everything else goes through unchanged.
- ``corrupt_response``: the same on the way back: one byte in the middle of a 2xx response's
  body is flipped; its head (Content-Length, checksum headers) goes through unchanged.
- ``complete_error``: a 200 whose body is an S3 InternalError, as S3 answers a
  CompleteMultipartUpload that failed after its headers were sent; not forwarded, so the
  upload stays open on the server.
- ``lost_answer``: the request reaches the server, which acts on it and answers, but the
  answer is dropped and the client's connection reset: a write that took effect while its
  client saw only a failed attempt (which it then retries).
- ``call``: the rule's ``call()`` runs (in a worker thread, the request held meanwhile), then
  the request goes on unchanged: something the server sees between two requests of the
  client, such as another writer replacing the object being read.

:meth:`FaultProxy.outage` resets every open connection and closes the listening socket
(new connections are refused) for N seconds, then listens again on the same port.
``rate`` caps the bytes per second relayed in both directions, all connections together,
so that transfers last long enough for an outage to start in their middle.
:meth:`FaultProxy.pause` holds every byte (requests are still read and counted) until
:meth:`FaultProxy.resume`; ``relayed`` counts the bytes let through, so a test can start an
outage after a known amount of traffic whatever the timing of the flows.

Connections are proxied one for one, keep-alive preserved. Everything runs on one asyncio
loop in a daemon thread of the calling process; ``stop()`` (or leaving the ``with`` block)
ends it and closes every socket.

    with FaultProxy(server_host, server_port) as proxy:
        proxy.add(Fault("slowdown", path=r"partNumber=", times=3))
        ... endpoint=proxy.endpoint ...
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

KINDS = (
    "reset",
    "slowdown",
    "internal_error",
    "error",
    "slow",
    "truncate",
    "stall",
    "complete_error",
    "corrupt",
    "corrupt_response",
    "lost_answer",
    "call",
)
HEADER_LIMIT = 64 * 1024
COPY_BYTES = 256 * 1024


@dataclass
class Fault:
    """One rule. A request matches when its method matches ``method`` (a regex such as
    ``"GET"`` or ``"PUT|POST"``; any if None) and
    ``path`` (a regex) is found in its target (path and query, e.g. ``uploadId=``,
    ``partNumber=``, ``\\?uploads``, a key prefix) and ``range`` (a regex) is found in its
    Range header (e.g. ``^bytes=4096-``: the ranged GET that starts at byte 4096; a request
    without one never matches a rule with ``range``). Of the matching requests, ``fraction``
    (spread evenly: 0.5 is every second one) get the fault, at most ``times`` of them
    (None: no limit), and only within ``duration`` seconds of the rule being added (None:
    while it is installed)."""

    kind: str
    method: Optional[str] = None
    path: Optional[str] = None
    times: Optional[int] = None
    fraction: float = 1.0
    duration: Optional[float] = None
    delay: float = 0.0
    status: int = 0  # of an "error" answer
    code: str = ""  # of an "error" answer
    headers: Dict[str, str] = field(default_factory=dict)  # more headers of an "error" answer
    details: str = ""  # more XML elements in an "error" answer's <Error>, e.g. "<Region>..</Region>"
    range: Optional[str] = None
    call: Optional[Callable[[], None]] = None  # of a "call" rule
    matched: int = 0  # requests that matched method, path and time window
    injected: int = 0  # requests that got the fault
    targets: List[str] = field(default_factory=list)  # "METHOD target" of each injected request
    _until: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if self.kind == "error" and not ((self.status == 301 or 400 <= self.status < 600) and self.code):
            raise ValueError("an error fault needs a status (301, 4xx or 5xx) and a code")
        if (self.kind == "call") != (self.call is not None):
            raise ValueError("a call fault, and only a call fault, needs a call")
        self._re = re.compile(self.path) if self.path else None
        self._range_re = re.compile(self.range) if self.range else None

    def _take(self, method: str, target: str, now: float, range_header: Optional[str] = None) -> bool:
        if self.method is not None and not re.fullmatch(self.method, method):
            return False
        if self._re is not None and not self._re.search(target):
            return False
        if self._range_re is not None and (range_header is None or not self._range_re.search(range_header)):
            return False
        if self.duration is not None and now > self._until:
            return False
        if self.times is not None and self.injected >= self.times:
            return False
        m = self.matched
        self.matched += 1
        if int((m + 1) * self.fraction) <= int(m * self.fraction):
            return False
        self.injected += 1
        self.targets.append(f"{method} {target}")
        return True


class _Bucket:
    """A token bucket for ``rate`` bytes per second (None: unlimited), shared by all
    connections of the proxy's loop."""

    def __init__(self, rate: Optional[float]) -> None:
        self.rate = rate
        self.next_free = time.monotonic()
        self.paused = False  # set by FaultProxy.pause(): nothing is relayed until resume()
        self.relayed = 0  # bytes let through so far

    async def take(self, n: int) -> None:
        while self.paused:
            await asyncio.sleep(0.005)
        self.relayed += n
        if self.rate is None:
            return
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


def _headers(head: bytes) -> Tuple[str, List[Tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    out = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            out.append((name.strip(), value.strip()))
    return lines[0], out


def _get(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def _read_body(reader: asyncio.StreamReader, headers: List[Tuple[str, str]], until_eof: bool) -> bytes:
    """The raw body bytes that follow a head: by Content-Length, chunked (kept encoded,
    trailers included), or up to EOF when neither is given and ``until_eof``."""
    te = _get(headers, "transfer-encoding")
    if te is not None and "chunked" in te.lower():
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            parts.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    t = await reader.readuntil(b"\r\n")
                    parts.append(t)
                    if t == b"\r\n":
                        return b"".join(parts)
            parts.append(await reader.readexactly(size + 2))
    n = _get(headers, "content-length")
    if n is not None:
        return await reader.readexactly(int(n)) if int(n) else b""
    return await reader.read() if until_eof else b""


def _error_response(
    status: int,
    reason: str,
    code: str,
    message: str,
    request_id: str,
    method: str,
    headers: Optional[Dict[str, str]] = None,
    details: str = "",
) -> bytes:
    """An S3 error response; to a HEAD, its headers only (as S3 answers: a body there would be read
    as the start of the next response on the connection)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{details}<RequestId>{request_id}</RequestId></Error>"
    ).encode()
    more = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n{more}Connection: keep-alive\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _reset(writer: Optional[asyncio.StreamWriter]) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class _Conn:
    """One proxied connection: the client's side and, once opened, the server's."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: Optional[asyncio.StreamWriter] = None


class FaultProxy:
    """The proxy, listening on ``endpoint`` (``http://127.0.0.1:<port>``), forwarding to
    ``upstream_host:upstream_port``. Thread-safe control: :meth:`add`, :meth:`clear`,
    :meth:`outage`; counters: ``requests``, ``requests_to(regex)``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, rate: Optional[float] = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._faults: List[Fault] = []
        self._lock = threading.Lock()  # guards _faults, _log (touched by callers and the loop)
        self._log: List[Tuple[float, str, str]] = []  # (time, method, target) of every request
        self._heads: List[Tuple[str, str, Dict[str, str]]] = []  # (method, target, headers) of every request
        self._ids = itertools.count(1)
        self._bucket = _Bucket(rate)
        self._conns: Set[_Conn] = set()
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self.down_until = 0.0
        sock = self._listen_socket(0)
        self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, started), name="fault-proxy", daemon=True)
        self._thread.start()
        started.wait(10)

    # -- control, from any thread --------------------------------------------------------

    @classmethod
    def in_front_of(cls, endpoint: str, *, rate: Optional[float] = None) -> "FaultProxy":
        """A proxy forwarding to the server at ``endpoint`` (``http://host:port``)."""
        host, _, port = endpoint.rpartition("//")[2].partition(":")
        return cls(host, int(port), rate=rate)

    def add(self, fault: Fault) -> Fault:
        fault._until = time.monotonic() + (fault.duration or 0.0)
        with self._lock:
            self._faults.append(fault)
        return fault

    def replace_before_get(
        self,
        client: Any,
        bucket: str,
        key: str,
        data: bytes,
        *,
        range: Optional[str] = None,
        path: Optional[str] = None,
    ) -> Fault:
        """The first GET matching ``range`` / ``path`` reaches the server only once ``key`` was
        replaced by ``data`` (``client.put``, straight to the server): another writer between
        two of a reader's GETs. A "call" rule; its ``injected`` says whether it happened."""
        return self.add(
            Fault("call", method="GET", range=range, path=path, times=1, call=lambda: client.put(bucket, key, data))
        )

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self._log)

    def requests_to(self, pattern: str, method: Optional[str] = None) -> int:
        """How many requests so far had ``pattern`` in their target (and ``method``)."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for _, m, t in self._log if rx.search(t) and (method is None or m == method))

    def targets(self, method: Optional[str] = None) -> List[str]:
        """The target (path and query) of every request so far, in arrival order (of ``method``)."""
        with self._lock:
            return [t for _, m, t in self._log if method is None or m == method]

    def user_agents(self) -> List[Tuple[str, str, str]]:
        """(method, target, User-Agent header or "") of every request so far."""
        return [(m, t, h.get("user-agent", "")) for m, t, h in self.headers()]

    def headers(self) -> List[Tuple[str, str, Dict[str, str]]]:
        """(method, target, headers by lowercase name) of every request so far."""
        with self._lock:
            return list(self._heads)

    def pause(self) -> None:
        """Relay nothing from now until :meth:`resume`; requests are still read, matched and
        counted (a request body is read whole before it is counted), so ``requests_to`` says
        which flows are waiting."""
        self._bucket.paused = True

    def resume(self) -> None:
        self._bucket.paused = False

    @property
    def relayed(self) -> int:
        """Bytes relayed so far, both directions, request bodies and responses."""
        return self._bucket.relayed

    def outage(self, seconds: float) -> None:
        """From now, for ``seconds``: every open connection reset, new ones refused."""
        fut = asyncio.run_coroutine_threadsafe(self._begin_outage(seconds), self._loop)
        fut.result(10)

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------

    @staticmethod
    def _listen_socket(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        return sock

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            await self._serve(sock)
            started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=HEADER_LIMIT)

    async def _begin_outage(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        await self._stop_accepting()
        self._drop_everything()  # the listening socket closes: new connections are refused
        self._loop.call_later(seconds, lambda: asyncio.ensure_future(self._end_outage()))

    async def _stop_accepting(self) -> None:
        """Accept no more connections, and let those accepted already reach their handler (which
        resets them: it sees ``down_until``). asyncio creates a connection's transport a few loop
        turns after accept(); if the server is closed in between, the transport fails to attach
        and the socket is left open, never read nor closed: a client that meets the outage there
        waits for its own timeout instead of a reset."""
        if self._server is None:
            return
        for sock in self._server.sockets:
            self._loop.remove_reader(sock.fileno())
        await asyncio.sleep(0.05)

    async def _end_outage(self) -> None:
        for _ in range(50):  # the port is ours; a TIME_WAIT may delay the bind a moment
            try:
                await self._serve(self._listen_socket(self.port))
                return
            except OSError:
                await asyncio.sleep(0.1)

    async def _shutdown(self) -> None:
        self._drop_everything()

    def _drop_everything(self) -> None:
        """Close the listening socket, reset every open connection, cancel their tasks."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            _reset(conn.upstream)
            _reset(conn.client)
        for t in list(self._tasks):
            t.cancel()

    def _match(self, method: str, target: str, range_header: Optional[str] = None) -> Optional[Fault]:
        now = time.monotonic()
        with self._lock:
            self._log.append((now, method, target))
            for f in self._faults:
                if f._take(method, target, now, range_header):
                    return f
        return None

    async def _relay(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(0, len(data), COPY_BYTES):
            chunk = data[i : i + COPY_BYTES]
            await self._bucket.take(len(chunk))
            writer.write(chunk)
            await writer.drain()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(c_writer)
        if time.monotonic() < self.down_until:
            # Accepted as the outage began (see _stop_accepting), not yet in _conns when
            # _drop_everything() ran. Let through, one such connection, kept alive, carried a
            # whole flow across a 30 s outage.
            _reset(c_writer)
            return
        self._conns.add(conn)
        self._tasks.add(task)
        u_reader: Optional[asyncio.StreamReader] = None
        try:
            while True:
                try:
                    head = await c_reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                first, headers = _headers(head)
                method, target = first.split(" ")[0], first.split(" ")[1]
                expect = _get(headers, "expect")
                if expect is not None and expect.lower() == "100-continue":
                    c_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                    head = (first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
                body = await _read_body(c_reader, headers, until_eof=False)
                with self._lock:
                    self._heads.append((method, target, {k.lower(): v for k, v in headers}))
                fault = self._match(method, target, _get(headers, "range"))
                await self._bucket.take(len(body))
                kind = fault.kind if fault is not None else None
                rid = f"FAULTPROXY-{next(self._ids)}"
                if kind == "reset":
                    _reset(c_writer)
                    return
                if kind in ("slowdown", "internal_error", "complete_error", "error"):
                    if kind == "error" and fault is not None:
                        resp = _error_response(
                            fault.status,
                            HTTPStatus(fault.status).phrase,
                            fault.code,
                            fault.code,
                            rid,
                            method,
                            fault.headers,
                            fault.details,
                        )
                    elif kind == "slowdown":
                        resp = _error_response(
                            503, "Slow Down", "SlowDown", "Please reduce your request rate.", rid, method
                        )
                    elif kind == "internal_error":
                        resp = _error_response(
                            500,
                            "Internal Server Error",
                            "InternalError",
                            "We encountered an internal error.",
                            rid,
                            method,
                        )
                    else:
                        resp = _error_response(
                            200, "OK", "InternalError", "We encountered an internal error.", rid, method
                        )
                    c_writer.write(resp)
                    await c_writer.drain()
                    continue
                if kind == "slow":
                    await asyncio.sleep(fault.delay if fault is not None else 0.0)
                if kind == "call" and fault is not None and fault.call is not None:
                    await asyncio.get_running_loop().run_in_executor(None, fault.call)
                if kind == "corrupt" and body:
                    flipped = bytearray(body)
                    flipped[len(body) // 2] ^= 0x01
                    body = bytes(flipped)
                if conn.upstream is None:
                    u_reader, conn.upstream = await asyncio.open_connection(*self.upstream, limit=HEADER_LIMIT)
                assert u_reader is not None
                conn.upstream.write(head + body)
                await conn.upstream.drain()
                r_head = await u_reader.readuntil(b"\r\n\r\n")
                status_line, r_headers = _headers(r_head)
                status = int(status_line.split(" ")[1])
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                closes = (_get(r_headers, "connection") or "").lower() == "close"
                r_body = b"" if no_body else await _read_body(u_reader, r_headers, until_eof=True)
                if kind == "corrupt_response" and r_body and 200 <= status < 300:
                    flipped = bytearray(r_body)
                    flipped[len(r_body) // 2] ^= 0x01
                    r_body = bytes(flipped)
                if kind == "lost_answer":
                    _reset(c_writer)
                    return
                if kind == "truncate" and len(r_body) > 1:
                    await self._relay(c_writer, r_head + r_body[: len(r_body) // 2])
                    return  # the connection closes (FIN) with the body half sent
                if kind == "stall":
                    if len(r_body) > 1:  # else the answer never comes at all
                        await self._relay(c_writer, r_head + r_body[: len(r_body) // 2])
                    while await c_reader.read(COPY_BYTES):  # silent until the client closes
                        pass
                    return
                await self._relay(c_writer, r_head + r_body)
                if closes:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._conns.discard(conn)
            self._tasks.discard(task)
            if conn.upstream is not None:
                try:
                    conn.upstream.close()
                except Exception:
                    pass
            if not c_writer.transport.is_closing():
                try:
                    c_writer.close()
                except Exception:
                    pass


class Blackhole:
    """A listening socket that accepts connections and never answers (a silent endpoint)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)  # the kernel completes handshakes; nothing ever reads
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` every 20 ms; raise AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)

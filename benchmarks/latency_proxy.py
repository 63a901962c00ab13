"""An HTTP/1.1 proxy on 127.0.0.1 that adds a fixed first-byte latency to every request.

Each request (headers, plus a body of its Content-Length) is held for ``delay`` seconds
before it goes on to the upstream server, so every response's first byte reaches the client
``delay`` later than it would directly; bytes then flow both ways unchanged. Connections are
proxied one for one (keep-alive is preserved), so a client's connection pool sees the same
number of connections as without the proxy. Chunked request bodies are not supported (S3
clients send Content-Length).

Bounded and self-stopping: at most ``max_connections`` client connections at once (more wait
in the listen backlog), and the proxy stops after ``max_seconds`` in all, or after
``idle_seconds`` without any connection open.

    with LatencyProxy("127.0.0.1", 8080, delay=0.020) as proxy:   # a thread of this process
        ... endpoint=proxy.endpoint ...

    python benchmarks/latency_proxy.py --upstream 127.0.0.1:8080 --delay-ms 20   # standalone
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from typing import Optional

HEADER_LIMIT = 64 * 1024
COPY_BYTES = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(COPY_BYTES)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class _Proxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, delay: float, max_connections: int, idle_seconds: float
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.idle_seconds = idle_seconds
        self.slots = asyncio.Semaphore(max_connections)
        self.open = 0
        self.last_close = time.monotonic()
        self.requests = 0

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        async with self.slots:
            self.open += 1
            u_writer: Optional[asyncio.StreamWriter] = None
            back: Optional["asyncio.Task[None]"] = None
            try:
                u_reader, u_writer = await asyncio.open_connection(*self.upstream)
                back = asyncio.ensure_future(_pipe(u_reader, c_writer))
                while True:
                    try:
                        head = await c_reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                        break
                    body = b""
                    n = _content_length(head)
                    if n:
                        body = await c_reader.readexactly(n)
                    self.requests += 1
                    await asyncio.sleep(self.delay)  # the added first-byte latency
                    u_writer.write(head + body)
                    await u_writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                if u_writer is not None:
                    try:
                        u_writer.close()
                    except Exception:
                        pass
                if back is not None:
                    try:
                        await asyncio.wait_for(back, 5)
                    except Exception:
                        pass
                try:
                    c_writer.close()
                except Exception:
                    pass
                self.open -= 1
                self.last_close = time.monotonic()

    async def run(self, sock: socket.socket, max_seconds: float, stop: Optional[threading.Event]) -> None:
        server = await asyncio.start_server(self.handle, sock=sock, limit=HEADER_LIMIT)
        deadline = time.monotonic() + max_seconds
        async with server:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                if self.open == 0 and time.monotonic() - self.last_close > self.idle_seconds:
                    break
                await asyncio.sleep(0.05)


class LatencyProxy:
    """The proxy on a thread of this process; ``endpoint`` is its URL. Stops on exit, on
    ``stop()``, after ``max_seconds`` or after ``idle_seconds`` with no connection."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        delay: float,
        *,
        max_connections: int = 512,
        max_seconds: float = 3600,
        idle_seconds: float = 300,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proxy = _Proxy(upstream_host, upstream_port, delay, max_connections, idle_seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._proxy.run(self._sock, max_seconds, self._stop)),
            name="latency-proxy",
            daemon=True,
        )
        self._thread.start()

    @property
    def requests(self) -> int:
        """Requests forwarded so far."""
        return self._proxy.requests

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> "LatencyProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="host:port of the server")
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--idle-seconds", type=float, default=300)
    ap.add_argument("--max-connections", type=int, default=512)
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    proxy = LatencyProxy(
        host,
        int(port),
        args.delay_ms / 1000,
        max_connections=args.max_connections,
        max_seconds=args.max_seconds,
        idle_seconds=args.idle_seconds,
    )
    print(proxy.endpoint, flush=True)
    proxy._thread.join()


if __name__ == "__main__":
    main()

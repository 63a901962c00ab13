"""A request handler served on 127.0.0.1 for the length of a ``with``: the small servers tests
write to answer as S3, STS or a credentials endpoint would (or would not)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Iterator


@contextlib.contextmanager
def serving(handler: type) -> Iterator[str]:
    """``handler`` (a ``BaseHTTPRequestHandler``) served on loopback, a thread per connection;
    yields its ``http://127.0.0.1:port``."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "") -> None:
    """Answer the handler's request: ``status``, ``body`` with its length and, when given, its type."""
    handler.send_response(status)
    if content_type:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)

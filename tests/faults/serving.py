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

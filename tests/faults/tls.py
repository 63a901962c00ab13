"""TLS in front of a plain test server, and a CONNECT proxy: what a private S3 endpoint with
its own certificate authority, reached through a corporate proxy, looks like.

- :func:`make_ca`: a throwaway certificate authority and a server certificate it signed, for
  ``localhost``, ``127.0.0.1`` and any names given, written as PEM files.
- :class:`TlsFront`: terminates TLS on ``https://127.0.0.1:<port>`` with that certificate and
  relays the bytes to a plain server (SeaweedFS).
- :class:`ConnectProxy`: an HTTP proxy that answers ``CONNECT host:port`` by opening a tunnel
  to one fixed upstream (whatever host was asked for), recording what was asked for.

Each runs an asyncio loop on a daemon thread; use them as context managers.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Coroutine, List, Optional, Tuple

CHUNK = 1 << 16
# The environment's proxy settings, as aws-c-http and boto3 read them (lowercase first).
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


def make_ca(directory: Path, names: Tuple[str, ...] = ()) -> Tuple[Path, Path, Path]:
    """Write ``ca.pem`` (the authority's certificate, to trust), ``server.pem`` and
    ``server.key`` (a certificate for localhost, 127.0.0.1 and ``names``) under ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool, sans: List[x509.GeneralName]) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s3torch test CA")])
    ca_cert = cert("s3torch test CA", ca_key, ca_name, ca_key, True, [])
    key = ec.generate_private_key(ec.SECP256R1())
    sans: List[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(n) for n in names]
    server_cert = cert("localhost", key, ca_cert.subject, ca_key, False, sans)

    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_pem, cert_pem, key_pem


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _splice(
    a: Tuple[asyncio.StreamReader, asyncio.StreamWriter], b: Tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


class _LoopThread:
    """A server on 127.0.0.1 run by an asyncio loop on a daemon thread."""

    def __init__(self, name: str, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self.port = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ssl = ssl_context
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name=name, daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock, ssl=self._ssl)
            started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Each cancelled task finished and its outcome taken here, and the loop closed below:
            # none is left for the garbage collector, whose asyncio finalizers log tracebacks
            # whenever it runs (inside an ast.parse, Python 3.11 then fails that parse:
            # "AST constructor recursion depth mismatch").
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running():
            self._call(stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TlsFront(_LoopThread):
    """``https://127.0.0.1:<port>`` (``endpoint``) with ``cert``/``key``, relaying to the plain
    server at ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        host, _, port = upstream.rpartition("//")[2].partition(":")
        self.upstream = (host, int(port))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        super().__init__("tls-front", ctx)
        self.endpoint = f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), up)


class ConnectProxy(_LoopThread):
    """An HTTP proxy at ``endpoint`` (``http://127.0.0.1:<port>``) that tunnels every
    ``CONNECT`` to ``upstream`` (host, port), whatever it asked for; ``asked`` lists the
    ``host:port`` of each CONNECT. Anything else gets 405."""

    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.asked: List[str] = []
        super().__init__("connect-proxy")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        self.asked.append(target)
        try:
            up = await asyncio.open_connection(*self.upstream)
        except OSError:
            # The answer, then wait for the client to hang up: closing first could reach it
            # before the 502 is read (a "socket closed" instead of the proxy's refusal).
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            try:
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice((reader, writer), up)

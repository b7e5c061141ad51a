"""Three keep-alive HTTP clients of one server, each reusing one connection: what field tools are.

A keep-alive client is where a transport stall shows: a new connection per request (curl)
never waits on a delayed ACK, a reused one does (the ~40 ms of Nagle's algorithm meeting the
client's delayed ACK). The transport test and the HTTP overhead benchmark send the same
requests through each of them:

* :class:`HttpClientClient`: the standard library's ``http.client.HTTPConnection`` (what the
  plugin's HTTP target uses, through :class:`~.connections.ConnectionPool`);
* :class:`HttpxClient`: an ``httpx.Client`` (the plugin's HTTP target used it before; its
  own client code costs ~0.6 ms more per request than ``http.client``);
* :class:`RawSocketClient`: a bare socket with TCP_NODELAY, the request in one ``sendall``,
  the response read by its Content-Length: no client library at all.

Each has ``request(method, path, body=None) -> (status, body bytes)`` and ``close()``.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

__all__ = ["CLIENTS", "HttpClientClient", "HttpxClient", "RawSocketClient", "open_client"]

_JSON = {"content-type": "application/json"}


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class HttpClientClient:
    name = "http.client"

    def __init__(self, url: str, timeout_s: float = 60.0):
        host, port = _host_port(url)
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout_s)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=_JSON if body is not None else {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


class HttpxClient:
    name = "httpx"

    def __init__(self, url: str, timeout_s: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(trust_env=False, timeout=timeout_s,
                                   limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        response = self.client.request(method, self.url + path, content=body, headers=_JSON if body is not None else None)
        return response.status_code, response.content

    def close(self) -> None:
        self.client.close()


class RawSocketClient:
    name = "raw socket"

    def __init__(self, url: str, timeout_s: float = 60.0):
        self.host, port = _host_port(url)
        self.sock = socket.create_connection((self.host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + (body or b""))  # one packet
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        header, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if "content-length" not in fields:
            raise ValueError("the raw-socket client reads Content-Length responses only")
        n = int(fields["content-length"])
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return status, out

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


CLIENTS = (HttpClientClient, HttpxClient, RawSocketClient)


def open_client(name: str, url: str, timeout_s: float = 60.0):
    """The client called ``name`` (``http.client``, ``httpx`` or ``raw socket``) of ``url``."""
    for cls in CLIENTS:
        if cls.name == name:
            return cls(url, timeout_s)
    raise ValueError(f"unknown client {name!r}: expected one of {', '.join(c.name for c in CLIENTS)}")

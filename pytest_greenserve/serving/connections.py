""":class:`ConnectionPool`: kept-alive ``http.client`` connections to one server, shared by threads.

What the plugin's HTTP target sends its requests through. The standard library's client, not
httpx: httpx's own client code cost ~0.6 ms per request over ``http.client`` on a kept-alive
connection (null engine, p50 added latency on two machines: httpx 1.3-1.6 ms, ``http.client``
0.7-0.9 ms, a raw socket 0.5-0.76 ms; ``benchmarks/test_http_overhead.py``), several % of
the ms/token of a fast engine (17 ms per request), which is what this tool measures.

* At most ``size`` connections, one per request in flight: a request takes an idle one (the
  most recently used: its socket's buffers are warm) or opens one, and gives it back once the
  whole response is read. A connection that raised is closed and dropped, never reused.
* A request goes out in one send (headers and body in one segment), on a socket with
  TCP_NODELAY: no wait on Nagle's algorithm meeting the server's delayed ACK.
* An idle connection the server closed (its keep-alive timeout) is seen before use and
  dropped; one the server closed just as the request went out (nothing of an answer came
  back) is retried once on a new connection, as HTTP clients do for that race.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from contextlib import contextmanager

__all__ = ["FAILURES", "ConnectionPool"]

#: what a request that got no (complete) answer raises: socket errors and timeouts are OSError
FAILURES = (OSError, http.client.HTTPException)

_JSON = "application/json"


class _Connection(http.client.HTTPConnection):
    """An ``HTTPConnection`` that connects with its own timeout, sets TCP_NODELAY itself (3.11's
    ``connect()`` does too; not left to the version) and sends a request in one ``sendall``."""

    def __init__(self, host: str, port: int, connect_timeout_s: float, timeout_s: float):
        super().__init__(host, port, timeout=timeout_s)
        self.connect_timeout_s = connect_timeout_s
        self.auto_open = 0  # never reconnect behind the pool's back: a closed connection raises
        self._held: list[bytes] | None = None

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.timeout)

    def send(self, data) -> None:
        if self._held is not None:  # inside send_request: collected, sent as one at its end
            self._held.append(bytes(data))
        else:
            super().send(data)

    def send_request(self, method: str, path: str, payload: bytes | None) -> None:
        """``method path`` with a JSON ``payload`` (or none), headers and body in one send.
        ``request()`` sends the headers, then the body, as two sends: two segments, and two
        reads and wake-ups of the server's event loop per request."""
        headers = {"Content-Type": _JSON, "Content-Length": str(len(payload))} if payload is not None else {}
        self._held = []
        try:
            self.request(method, path, body=payload, headers=headers)
        finally:
            held, self._held = self._held, None
        super().send(b"".join(held))

    def idle_and_open(self) -> bool:
        """Whether this idle connection can carry a request: open, and nothing to read. An idle
        connection's socket is readable only when the server closed it (or sent what nobody
        asked for); either way it is not reused."""
        sock = self.sock
        if sock is None:
            return False
        try:
            if hasattr(select, "poll"):  # poll, not select: select fails on descriptors past 1023
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return not poller.poll(0)
            return not select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False


class ConnectionPool:
    """Up to ``size`` kept-alive HTTP/1.1 connections to ``host:port``; thread-safe."""

    def __init__(self, host: str, port: int, size: int = 1, *, connect_timeout_s: float = 10.0,
                 timeout_s: float = 600.0):
        self.host = host
        self.port = port
        self.size = max(1, size)
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        #: connections opened so far (how the tests see reuse)
        self.opened = 0
        self._idle: list[_Connection] = []  # a stack: the most recently used is taken first
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.size)  # connections in use, at most size

    def request(self, method: str, path: str, payload: bytes | None = None) -> tuple[int, bytes]:
        """``(status, body)`` of one request; the connection goes back to the pool for the next."""
        with self.stream(method, path, payload) as response:
            return response.status, response.read()

    @contextmanager
    def stream(self, method: str, path: str, payload: bytes | None = None):
        """The response of one request, to read as it arrives. The connection goes back to the
        pool if the response was read to its end, and is dropped if not or if anything raised."""
        conn, response = self._exchange(method, path, payload)
        try:
            yield response
        except BaseException:
            self._drop(conn)
            raise
        if response.isclosed() and not response.will_close:
            self._give_back(conn)
        else:  # the rest of the body is still on the wire, or the server said it closes
            self._drop(conn)

    def close(self) -> None:
        """Close the idle connections (those in use are closed by their requests' ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- one request ------------------------------------------------------------------------
    def _exchange(self, method: str, path: str, payload: bytes | None):
        """Send the request and read the response's status and headers: ``(conn, response)``."""
        retried = False
        while True:
            conn, reused = self._take()
            try:
                conn.send_request(method, path, payload)
                return conn, conn.getresponse()
            except ConnectionError:
                self._drop(conn)
                # a reused connection closed by the server as the request went out: no answer
                # came, so the server did not see it; once, on a new connection
                if not reused or retried:
                    raise
                retried = True
            except BaseException:
                self._drop(conn)
                raise

    def _take(self) -> tuple[_Connection, bool]:
        """An idle connection (``reused`` True) or a new one, once fewer than ``size`` are in use."""
        if not self._slots.acquire(timeout=self.timeout_s):
            raise TimeoutError(f"no connection to {self.host}:{self.port} came free within {self.timeout_s:g} s "
                               f"({self.size} in use)")
        try:
            while True:
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
                if conn is None:
                    return self._open(), False
                if conn.idle_and_open():
                    return conn, True
                conn.close()  # the server closed it while it was idle
        except BaseException:
            self._slots.release()
            raise

    def _open(self) -> _Connection:
        conn = _Connection(self.host, self.port, self.connect_timeout_s, self.timeout_s)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self.opened += 1
        return conn

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            self._idle.append(conn)
        self._slots.release()

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._slots.release()

"""The HTTP target's connections: kept alive and reused, at most one per request in flight, a
closed one dropped, a request in one send.

A new connection per request, or a client library's own per-request work, is what the HTTP
target adds to every measured request (httpx: ~0.6 ms over ``http.client``;
benchmarks/test_http_overhead.py reports it). These tests count connections, not milliseconds.
"""

import json
import socket
import socketserver
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import psutil
import pytest

from pytest_greenserve.engines.base import EngineError
from pytest_greenserve.serving.client import HttpTarget
from pytest_greenserve.serving.connections import ConnectionPool, _Connection
from pytest_greenserve.serving.null import NullEngine
from stub_http import answer_json


def server_connections(target) -> int:
    """Connections the target's server holds open to a client (its side of them, ESTABLISHED)."""
    (pid,) = target.pids()
    port = target.server.port
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


@pytest.fixture
def null_target(tiny_handle):
    made = []

    def make(**kwargs):
        target = HttpTarget(tiny_handle("gpt2"), "cpu", NullEngine, health_timeout_s=60, new_tokens_max=64, **kwargs)
        made.append(target)
        target.load()
        return target

    yield make
    for target in made:
        target.close()


def test_sequential_requests_and_streams_reuse_one_connection(null_target):
    target = null_target()
    for i in range(20):
        assert target.generate([i + 1, 7], 3).token_ids == [i + 1, 7, i + 1]
    target.stream = True
    for i in range(5):
        got = target.generate([i + 1, 7], 3)
        assert got.token_ids == [i + 1, 7, i + 1] and len(got.token_times_s) == 3
    target.stream = False
    # /info and 25 requests, streamed or not, on one connection: the first one
    assert target.connections_opened == 1
    assert server_connections(target) == 1


def test_a_refused_request_says_why_and_keeps_the_connection(null_target):
    target = null_target()
    with pytest.raises(EngineError) as info:
        target.generate([1, 2], 65)  # above the server's ceiling of 64
    assert str(info.value) == ("the server failed the request: HTTP 400: "
                               "'max_tokens' is 65, above this server's ceiling of 64")
    assert target.generate([1, 2], 3).token_ids == [1, 2, 1]
    assert target.connections_opened == 1


def test_concurrent_clients_open_at_most_one_connection_each(null_target):
    target = null_target(concurrency=4)

    def client(k: int):
        return [target.generate([k, i + 1], 2).token_ids for i in range(30)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(client, range(1, 5)))
    assert outputs == [[[k, i + 1] for i in range(30)] for k in range(1, 5)]
    assert 1 <= target.connections_opened <= 4
    assert server_connections(target) == target.connections_opened


def test_more_client_threads_than_the_concurrency_share_its_connections(null_target):
    target = null_target(concurrency=2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(lambda i: target.generate([i + 1], 2).token_ids, range(60)))
    assert outputs == [[i + 1, i + 1] for i in range(60)]
    assert 1 <= target.connections_opened <= 2


def test_a_stream_that_ends_in_an_error_drops_its_connection(tiny_handle):
    from serving_engines import Raising

    target = HttpTarget(tiny_handle("gpt2"), "cpu", Raising, health_timeout_s=60)
    target.load()
    try:
        for opened in (2, 3):
            target.stream = True  # the error event ends the stream early: its connection is dropped
            with pytest.raises(EngineError, match="failed the request: the engine failed: RuntimeError: planted"):
                target.generate([1, 2], 3)
            target.stream = False  # a 500 is read to its end: one new connection, kept
            for _ in range(2):
                with pytest.raises(EngineError, match=r"HTTP 500: the engine failed: RuntimeError: planted"):
                    target.generate([1, 2], 3)
            assert target.connections_opened == opened
    finally:
        target.close()


# -- the pool against a server whose connections these tests control ---------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        self.server.accepted += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        if self.server.requests in self.server.unanswered:  # closed as the request arrived
            self.close_connection = True
            return
        answer_json(self, body)
        # closed after answering, as a server's keep-alive timeout closes an idle connection
        self.close_connection = self.server.requests in self.server.close_after

    do_GET = do_POST

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.accepted = 0
        self.requests = 0
        self.unanswered: set[int] = set()
        self.close_after: set[int] = set()
        self.closed = threading.Event()  # set once the server closed a connection

    def shutdown_request(self, request):
        super().shutdown_request(request)
        self.closed.set()


@pytest.fixture
def stub():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pool = ConnectionPool("127.0.0.1", server.server_address[1], 2, timeout_s=10)
    yield server, pool
    pool.close()
    server.shutdown()
    server.server_close()


def _post(pool, i: int) -> bytes:
    status, body = pool.request("POST", "/echo", json.dumps({"i": i}).encode())
    assert status == 200
    return body


def test_a_connection_the_server_closed_while_idle_is_dropped_and_the_next_request_succeeds(stub):
    server, pool = stub
    server.close_after = {3}
    assert [json.loads(_post(pool, i)) for i in range(3)] == [{"i": i} for i in range(3)]
    assert server.closed.wait(10)
    (idle,) = pool._idle
    assert not idle.idle_and_open()  # seen closed before use, not found out by a failed request
    assert [json.loads(_post(pool, i)) for i in range(3, 6)] == [{"i": i} for i in range(3, 6)]
    assert (server.requests, server.accepted, pool.opened) == (6, 2, 2)  # the 4th on a new connection, kept


def test_a_connection_closed_as_the_request_went_out_is_retried_once_on_a_new_one(stub):
    server, pool = stub
    server.unanswered = {3}
    assert [json.loads(_post(pool, i)) for i in range(5)] == [{"i": i} for i in range(5)]
    assert (server.requests, server.accepted, pool.opened) == (6, 2, 2)


def test_a_request_that_gets_no_answer_is_not_retried_on_a_new_connection_nor_twice(stub):
    server, pool = stub
    server.unanswered = {1}
    with pytest.raises(ConnectionError):  # a new connection: the server saw the request
        _post(pool, 0)
    assert (server.requests, pool.opened) == (1, 1)
    _post(pool, 1)
    server.unanswered = {3, 4}
    with pytest.raises(ConnectionError):  # the reused connection's retry fails too: once only
        _post(pool, 2)
    assert (server.requests, pool.opened) == (4, 3)
    assert json.loads(_post(pool, 3)) == {"i": 3}


def test_a_response_left_unread_drops_its_connection(stub):
    server, pool = stub
    with pool.stream("POST", "/echo", b'{"i": 0}') as response:
        assert response.read(2) == b'{"'
    with pytest.raises(KeyError), pool.stream("POST", "/echo", b'{"i": 1}'):
        raise KeyError("a reader that failed midway")
    _post(pool, 2)
    assert pool.opened == 3 and server.accepted == 3


def test_a_request_goes_out_in_one_send_on_a_socket_without_nagle(stub):
    server, _ = stub
    sent = []

    class Recording:
        def sendall(self, data):
            sent.append(bytes(data))

    conn = _Connection("127.0.0.1", server.server_address[1], 10, 10)
    conn.sock = Recording()
    conn.send_request("POST", "/v1/completions", b'{"prompt": [1]}')
    (one,) = sent
    head, _, body = one.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/completions HTTP/1.1\r\n") and body == b'{"prompt": [1]}'
    assert b"Content-Type: application/json" in head and b"Content-Length: 15" in head
    conn.sock = None
    conn.connect()
    try:
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()

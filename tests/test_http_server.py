"""The API's HTTP server (lisp_controller/api/server.py) in this process,
with a trivial application: idle connections wait without a worker, the
longest idle is shed first, kept-alive and pipelined requests are served.
The controller's own server is tested with the real process in
tests/test_reliability.py."""
from __future__ import annotations

import time

import eventlet
import pytest
from eventlet.green import socket

from lisp_controller.api.server import Server

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> tuple[Server, int]:
        listener = eventlet.listen(("127.0.0.1", 0))
        server = Server(listener, app, **{"client_timeout": 5.0, **kw})
        server.threads.append(eventlet.spawn(server.serve_forever))
        servers.append(server)
        return server, listener.getsockname()[1]
    yield start
    for server in servers:
        server.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    return s


def answer(s: socket.socket, count: int = 1) -> bytes:
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"ok"):
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    return data


def wait(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        eventlet.sleep(0.01)


def test_idle_connections_take_no_worker_and_requests_still_get_one(serve):
    server, port = serve(max_clients=4, max_idle=100)
    idle = [connect(port) for _ in range(40)]  # ten times the workers
    wait(lambda: len(server.idle) == 40)
    assert server.pool.running() == 0
    s = connect(port)
    mark = time.monotonic()
    s.sendall(REQUEST)
    assert answer(s).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - mark < 0.5
    wait(lambda: server.pool.running() == 0 and len(server.idle) == 41)  # kept alive: waiting again, no worker
    s.sendall(REQUEST)  # and served again from there
    assert answer(s).startswith(b"HTTP/1.1 200")
    for c in idle + [s]:
        c.close()


def test_the_connection_idle_the_longest_is_shed_first(serve):
    server, port = serve(max_idle=5)
    clients = []
    for _ in range(8):
        clients.append(connect(port))
        wait(lambda: len(server.idle) == min(len(clients), 5))
    for c in clients[:3]:
        assert c.recv(10) == b""  # closed by the server
    for c in clients[3:]:
        c.sendall(REQUEST)
        assert answer(c).startswith(b"HTTP/1.1 200")
        c.close()


def test_pipelined_requests_are_all_answered(serve):
    server, port = serve()
    s = connect(port)
    s.sendall(REQUEST * 3)
    assert answer(s, 3).count(b"HTTP/1.1 200") == 3
    s.close()


def test_a_silent_connection_is_closed_after_client_timeout(serve):
    server, port = serve(client_timeout=0.3)
    s = connect(port)
    mark = time.monotonic()
    assert s.recv(10) == b""
    assert 0.2 < time.monotonic() - mark < 1.5

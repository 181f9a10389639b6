"""Benchmark: what idle connections cost a request, eventlet's server vs ours.

    python bench/idle_clients.py                 # 2,000 idle, 1,000 workers, 5 s timeout
    python bench/idle_clients.py --idle 5000

In one process, on loopback, with the same trivial WSGI application: N
connections are opened and say nothing, then one request is timed, first
against eventlet's own server (a greenthread per accepted connection from a
pool of `--workers`, as the controller used) as the baseline, then against
lisp_controller/api/server.py (idle connections wait in a waiting room with
no greenthread). Prints the request's latency for each, and the ratio. The
baseline's wait is bounded by `--timeout` (the server's client timeout:
the controller's default is 30 s). Sends traffic to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import eventlet  # noqa: E402
import eventlet.wsgi  # noqa: E402
from eventlet.green import socket  # noqa: E402

from lisp_controller.api.server import Server  # noqa: E402

REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "15")])
    return [b'{"status":"ok"}']


def timed_request(port: int, timeout: float) -> float:
    mark = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(REQUEST)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return time.monotonic() - mark


def measure(kind: str, idle: int, workers: int, timeout: float) -> float:
    listener = eventlet.listen(("127.0.0.1", 0), backlog=idle + 100)
    port = listener.getsockname()[1]
    if kind == "eventlet":
        thread = eventlet.spawn(eventlet.wsgi.server, listener, app, log_output=False, max_size=workers,
                                socket_timeout=timeout)
        server = None
    else:
        server = Server(listener, app, client_timeout=timeout, max_clients=workers, max_idle=idle + 100)
        thread = eventlet.spawn(server.serve_forever)
    eventlet.sleep(0.1)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=timeout * 4) for _ in range(idle)]
    eventlet.sleep(0.5)  # let the server accept what it will
    try:
        return timed_request(port, timeout * 4)
    finally:
        for c in clients:
            c.close()
        thread.kill()
        if server is not None:
            server.close()
        listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=2000, help="connections that send nothing")
    parser.add_argument("--workers", type=int, default=1000, help="requests served at once")
    parser.add_argument("--timeout", type=float, default=5.0, help="the servers' client timeout, seconds")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * args.idle + 1000)), hard))
    base = measure("eventlet", args.idle, args.workers, args.timeout)
    ours = measure("ours", args.idle, args.workers, args.timeout)
    print(f"{args.idle} idle connections, {args.workers} workers, client timeout {args.timeout:g} s")
    print(f"  eventlet.wsgi.server   one request: {base * 1000:10.1f} ms")
    print(f"  api/server.py          one request: {ours * 1000:10.1f} ms   ({base / ours:.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

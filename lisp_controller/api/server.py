"""The API's HTTP server: eventlet's HTTP/1.1 protocol, our connections.

eventlet's own server gives every accepted connection a greenthread from a
pool of fixed size at once, and the greenthread waits as long as the client
says nothing: 2,000 idle connections (a scan, a leaky client, an attack)
held the whole pool, and a health request waited 59 s in the listen queue.
Here a connection costs a greenthread only while a request of it is being
read and answered (docs/reliability.rst, "The API under load"):

- an accepted connection, and a kept-alive one after its answer, waits in
  the *waiting room*: registered with the hub for readability, nothing
  else. When bytes arrive it gets a worker from the pool for one request.
- The waiting room is bounded: past `max_idle` the connection idle the
  longest is closed first, and any idle for `client_timeout` is closed.
- A request must deliver its request line and headers within
  `client_timeout` in total, however slowly it trickles (slowloris);
  each later read of the body may stall for `client_timeout` at most.
- Framing is strict (RFC 9112, section 6): two different Content-Length
  headers, a length that is not digits, a transfer coding other than
  chunked, or both framings at once get 400 (501 for a coding we do not
  know) and the connection is closed, before the application runs.
"""
from __future__ import annotations

import errno
import json
import logging
import resource
import ssl
import time
from http import HTTPStatus
from typing import Callable

import eventlet
import eventlet.wsgi
from eventlet import hubs, queue

from lisp_controller.openflow.tls import reason

LOG = logging.getLogger("lisp_controller.http")
MAX_CLIENTS = 1000  # requests read and answered at once (each a greenthread)
MAX_IDLE = 8192  # connections waiting for their next request (each a socket, no greenthread)
BACKLOG = 1000  # a burst of clients must not have its SYNs dropped
SWEEP_INTERVAL = 0.5  # seconds between checks for idle connections past their time
FD_SPARE = 1024  # files for bridges, the store and the rest of the process


class _HeadersTooSlow(Exception):
    """The request line and headers took longer than client_timeout."""


def framing_problem(headers) -> tuple[int, str] | None:
    """(status, why) if the request's framing is ambiguous or unknown;
    `headers` is an email.message.Message (http.client's parse)."""
    lengths = [v.strip() for h in headers.get_all("Content-Length") or () for v in h.split(",")]
    codings = [c.strip().lower() for h in headers.get_all("Transfer-Encoding") or () for c in h.split(",")]
    if any(not v.isdigit() or not v.isascii() for v in lengths):
        return 400, f"Content-Length {', '.join(lengths)!r} is not a number of bytes"
    if len(set(int(v) for v in lengths)) > 1:
        return 400, f"different Content-Length headers ({', '.join(lengths)})"
    if codings and lengths:
        return 400, "Content-Length and Transfer-Encoding together"
    if codings and codings[-1] != "chunked":
        return 400, f"Transfer-Encoding {', '.join(codings)}: chunked must come last"
    if codings and codings != ["chunked"]:
        return 501, f"Transfer-Encoding {', '.join(codings)} is not supported (chunked only)"
    return None


class Protocol(eventlet.wsgi.HttpProtocol):
    """One client connection, kept across its requests: made once, then
    `serve_one` for each request (eventlet's constructor would instead
    serve the connection to its end in one greenthread)."""

    def __init__(self, conn_state: list, server: eventlet.wsgi.Server):  # noqa: super() would serve
        self.request = conn_state[1]
        self.client_address = conn_state[0]
        self.conn_state = conn_state
        self.server = server
        self.capitalize_response_headers = server.capitalize_response_headers
        self._deadline: eventlet.Timeout | None = None
        self.setup()

    def serve_one(self) -> bool:
        """Read and answer one request; True if the connection stays open."""
        self.close_connection = True
        self._deadline = eventlet.Timeout(self.server.socket_timeout, _HeadersTooSlow)
        try:
            self.handle_one_request()
        except _HeadersTooSlow:
            LOG.info("API client %s: request headers not complete after %g s; closed",
                     self.client_address[0], self.server.socket_timeout)
            return False
        except ssl.SSLError as e:  # plain HTTP to the HTTPS port, a CA the client does not trust
            LOG.info("API TLS connection from %s refused: %s", self.client_address[0], reason(e))
            return False
        finally:
            self._deadline.cancel()
        return not self.close_connection and self.conn_state[2] != eventlet.wsgi.STATE_CLOSE

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self._deadline.cancel()  # the headers are in; the body has per-read timeouts
        problem = framing_problem(self.headers)
        if problem is not None:
            self._refuse(*problem)
            return False
        return True

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"status": status, "field": None, "message": message}}).encode()
        self.wfile.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(),
                                                           len(body), body))
        self.close_connection = True

    def pending(self) -> bool:
        """True if the next request's bytes are already here (pipelined,
        or buffered by TLS): the waiting room would not see them."""
        sock = self.connection
        sock.settimeout(0)
        try:
            return bool(self.rfile.peek(1))
        except (OSError, ValueError):  # nothing yet (would block), or closed
            return False
        finally:
            sock.settimeout(self.server.socket_timeout)


class _Client:
    __slots__ = ("sock", "addr", "protocol", "listener", "deadline")

    def __init__(self, sock, addr):
        self.sock, self.addr = sock, addr
        self.protocol: Protocol | None = None
        self.listener = None
        self.deadline = 0.0


class Server:
    def __init__(self, sock, app: Callable, client_timeout: float, max_clients: int = MAX_CLIENTS,
                 max_idle: int = MAX_IDLE):
        self.sock = sock
        self.wsgi = eventlet.wsgi.Server(sock, sock.getsockname(), app, log=LOG, protocol=Protocol,
                                         log_output=False, debug=False, socket_timeout=client_timeout)
        self.client_timeout = client_timeout
        self.max_idle = max_idle
        self.pool = eventlet.GreenPool(max_clients)
        self.idle: dict[_Client, None] = {}  # in the order they started waiting: oldest first
        self.ready: queue.LightQueue = queue.LightQueue()
        self.hub = hubs.get_hub()
        self.shed = 0  # idle connections closed to make room, for the log
        self.threads: list = []

    def serve_forever(self) -> None:
        self.threads += [eventlet.spawn(self._dispatch), eventlet.spawn(self._sweep)]
        while True:
            try:
                sock, addr = self.sock.accept()
            except OSError as e:
                if e.errno in (errno.EBADF, errno.EINVAL):  # the listening socket was closed: stop
                    return
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    LOG.warning("API: cannot accept a connection (%s); closing the longest idle one",
                                e.strerror)
                    self._shed_oldest()
                    eventlet.sleep(0.1)
                # else a client that left before it was accepted (ECONNABORTED...): the next one
                continue
            sock.settimeout(self.client_timeout)
            self._wait(_Client(sock, addr))

    # -- the waiting room --------------------------------------------------
    def _wait(self, client: _Client) -> None:
        if len(self.idle) >= self.max_idle:
            self._shed_oldest()
        client.deadline = time.monotonic() + self.client_timeout
        try:
            client.listener = self.hub.add(self.hub.READ, client.sock.fileno(), lambda _fd: self._wake(client),
                                           lambda *_: self._wake(client), lambda: None)
        except (OSError, ValueError):  # already closed
            self._close(client)
            return
        self.idle[client] = None

    def _wake(self, client: _Client) -> None:
        """Bytes arrived (called by the hub: must not block)."""
        if self.idle.pop(client, False) is not None:
            return  # already woken
        self._unlisten(client)
        self.ready.put(client)

    def _unlisten(self, client: _Client) -> None:
        if client.listener is not None:
            self.hub.remove(client.listener)
            client.listener = None

    def _shed_oldest(self) -> None:
        if self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            self._close(oldest)
            self.shed += 1
            if self.shed in (1, 10, 100) or self.shed % 1000 == 0:
                LOG.warning("API: %d idle connections waiting; closed the longest idle (%d so far)",
                            self.max_idle, self.shed)

    def _sweep(self) -> None:
        while True:
            eventlet.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            while self.idle:
                oldest = next(iter(self.idle))
                if oldest.deadline > now:
                    break
                del self.idle[oldest]
                self._close(oldest)

    # -- requests ------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            client = self.ready.get()
            self.pool.spawn_n(self._serve, client)  # waits here while every worker is busy

    def _serve(self, client: _Client) -> None:
        keep = False
        try:
            if client.protocol is None:
                client.protocol = Protocol([client.addr, client.sock, eventlet.wsgi.STATE_IDLE], self.wsgi)
            keep = client.protocol.serve_one()
            while keep and client.protocol.pending():
                keep = client.protocol.serve_one()
        except OSError as e:  # the client went away mid-answer
            LOG.debug("API client %s: %s", client.addr[0], e)
        except Exception:  # a bug: the connection is closed, the server goes on
            LOG.exception("API client %s: connection failed", client.addr[0])
        if keep:
            self._wait(client)
        else:
            self._close(client)

    def close(self) -> None:
        """Stop: no more accepts, idle connections closed (requests being
        answered finish on their own)."""
        for thread in self.threads:
            thread.kill()
        for client in list(self.idle):
            self._close(client)
        self.idle.clear()
        self.sock.close()

    def _close(self, client: _Client) -> None:
        self._unlisten(client)
        try:
            if client.protocol is not None:
                client.protocol.finish()  # flushes, closes the files and the socket
            else:
                client.sock.close()
        except OSError:
            pass


def serve(sock, app: Callable, client_timeout: float) -> None:
    """Serve `app` on the listening `sock` forever."""
    Server(sock, app, client_timeout, max_idle=_fit_fd_limit()).serve_forever()


def _fit_fd_limit() -> int:
    """Raise the open files limit for every client the API holds (busy and
    idle) plus the bridges and the store, where the system allows; the
    number of idle connections kept is what then fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CLIENTS + MAX_IDLE + FD_SPARE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            LOG.info("open files limit raised from %d to %d", soft, new)
            soft = new
    if soft == resource.RLIM_INFINITY:
        return MAX_IDLE
    return max(64, min(MAX_IDLE, soft - MAX_CLIENTS - FD_SPARE))

"""A rogue OpenFlow 1.3 switch on a plain socket, for the admission tests.

It claims whatever datapath ID it is told to and answers just enough
(features, port description, echo, barrier, empty flow statistics) to be
taken for a switch. It talks to the real controller process; nothing of
the controller is mocked.
"""
from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time

VERSION = 4
HELLO, ECHO_REQUEST, ECHO_REPLY, FEATURES_REQUEST, FEATURES_REPLY = 0, 2, 3, 5, 6
MULTIPART_REQUEST, MULTIPART_REPLY, BARRIER_REQUEST, BARRIER_REPLY = 18, 19, 20, 21
MP_FLOW, MP_PORT_DESC = 1, 13
OFPP_LOCAL = 0xFFFFFFFE
HEADER = struct.Struct("!BBHI")
CONTROLLER = ("172.31.255.1", 6653)


def message(kind: int, xid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(VERSION, kind, HEADER.size + len(body), xid) + body


def features_reply(xid: int, dpid: int) -> bytes:
    # datapath_id, n_buffers, n_tables, auxiliary_id, pad, capabilities, reserved
    return message(FEATURES_REPLY, xid, struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0x4F, 0))


def port(number: int, name: str) -> bytes:
    """An ofp_port (OpenFlow 1.3, 64 bytes)."""
    return struct.pack("!I4x6s2x16s8I", number, b"\x02\x00\x00\x00\x00\x01", name.encode(), *[0] * 8)


def multipart_reply(xid: int, kind: int, body: bytes = b"") -> bytes:
    return message(MULTIPART_REPLY, xid, struct.pack("!HH4x", kind, 0) + body)


class Rogue:
    """One connection to the controller. Create it inside the controller's
    namespace (`testbed.netns`); use it from anywhere after."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.closed_at: float | None = None  # when the controller closed it
        self._thread: threading.Thread | None = None
        self._stop = False

    @classmethod
    def connect(cls, address: tuple = CONTROLLER, tls: ssl.SSLContext | None = None,
                timeout: float = 10.0) -> "Rogue":
        sock = socket.create_connection(address, timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock)
        return cls(sock)

    @property
    def where(self) -> str:
        host, port_ = self.sock.getsockname()[:2]
        return f"{host}:{port_}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float = 10.0):
        """The next message as (type, xid, body), or None once the
        controller has closed the connection (or reset it)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= HEADER.size:
                _, kind, length, xid = HEADER.unpack_from(self.buf)
                if len(self.buf) >= length:
                    body, self.buf = self.buf[HEADER.size:length], self.buf[length:]
                    return kind, xid, body
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the controller sent nothing")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("the controller sent nothing") from None
            except (ConnectionResetError, ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                self.eof = True
                self.closed_at = time.monotonic()
            self.buf += chunk

    def answer(self, kind: int, xid: int, body: bytes, dpid: int, bridge: str) -> None:
        if kind == ECHO_REQUEST:
            self.send(message(ECHO_REPLY, xid, body))
        elif kind == FEATURES_REQUEST:
            self.send(features_reply(xid, dpid))
        elif kind == BARRIER_REQUEST:
            self.send(message(BARRIER_REPLY, xid))
        elif kind == MULTIPART_REQUEST:
            mp = struct.unpack_from("!H", body)[0]
            if mp == MP_PORT_DESC:
                self.send(multipart_reply(xid, MP_PORT_DESC, port(OFPP_LOCAL, bridge)))
            elif mp == MP_FLOW:
                self.send(multipart_reply(xid, MP_FLOW))

    def handshake(self, dpid: int, bridge: str = "br2", timeout: float = 15.0) -> bool:
        """HELLO, then answer the controller until it has asked for the port
        description (a switch in service, as far as the handshake goes).
        False if the controller closes the connection first."""
        self.send(message(HELLO, 1))
        deadline = time.monotonic() + timeout
        while True:
            msg = self.receive(max(deadline - time.monotonic(), 0.01))
            if msg is None:
                return False
            kind, xid, body = msg
            self.answer(kind, xid, body, dpid, bridge)
            if kind == MULTIPART_REQUEST and struct.unpack_from("!H", body)[0] == MP_PORT_DESC:
                return True

    def serve(self, dpid: int, bridge: str = "br2") -> None:
        """Go on answering in a thread of its own until closed."""
        def run():
            while not self._stop:
                try:
                    msg = self.receive(0.2)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if msg is None:
                    return
                try:
                    self.answer(*msg, dpid, bridge)
                except OSError:
                    return
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait_closed(self, timeout: float) -> bool:
        """True if the controller closes the connection within `timeout`
        seconds (whatever it sends meanwhile is read and dropped)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return self.eof
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.receive(left)
            except TimeoutError:
                return False
            self.buf = b""
        return True

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(5)


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the other end has closed `sock` (non-blocking check)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except (ConnectionResetError, OSError):
        return True

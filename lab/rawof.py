"""A `Switch` on a real OVS bridge without os-ken's controller: for tests and
benchmarks of the OpenFlow writer itself (openflow/switch.py).

OVS listens for OpenFlow on ``<rundir>/<bridge>.mgmt`` (a Unix socket, so
no network is involved). `SocketDatapath` plays the part of os-ken's
datapath: `send` puts a message into a bounded queue that one greenthread
writes out in order (os-ken's send queue holds 16), and a reader
greenthread hands replies and errors to the Switch, as the controller's
event handlers do. Echo requests are answered. It runs on os-ken's hub as
the process chose it (native threads unless eventlet was set up, as in the
controller).
"""
from __future__ import annotations

import socket
import struct
from pathlib import Path
from types import SimpleNamespace

from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.openflow.switch import Switch

_HEADER = struct.Struct("!BBHI")
SEND_QUEUE = 16  # os-ken's Datapath.send_q


class SocketDatapath:
    def __init__(self, path: Path | str):
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(str(path))
        self.conn.sendall(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, 1))
        self.id = 0
        self.switch: Switch | None = None
        self.errors: list = []  # errors no request of the Switch claimed
        self.closed = False
        self._queue = hub.Queue(SEND_QUEUE)
        self._buf = b""
        self._read_hello()
        self._threads = [hub.spawn(self._send_loop), hub.spawn(self._receive_loop)]

    def _read_hello(self) -> None:
        while True:
            for msg_type, _, _ in self._messages():
                if msg_type == ofp.OFPT_HELLO:
                    return

    def _messages(self):
        data = self.conn.recv(1 << 20)
        if not data:
            raise ConnectionError("the switch closed the connection")
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            _, msg_type, length, xid = _HEADER.unpack_from(self._buf)
            if len(self._buf) < length:
                break
            out.append((msg_type, xid, self._buf[:length]))
            self._buf = self._buf[length:]
        return out

    def send(self, buf: bytes) -> bool:
        if self.closed:
            return False
        self._queue.put(buf)
        return True

    def _send_loop(self) -> None:
        try:
            while True:
                buf = self._queue.get()
                if buf is None:
                    return
                self.conn.sendall(buf)
        except OSError:
            self.closed = True

    def _receive_loop(self) -> None:
        try:
            while True:
                for msg_type, xid, buf in self._messages():
                    self._dispatch(msg_type, xid, buf)
        except (ConnectionError, OSError):
            self.closed = True
            if self.switch is not None:
                self.switch.close()

    def _dispatch(self, msg_type: int, xid: int, buf: bytes) -> None:
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            self.send(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_ECHO_REPLY, len(buf), xid) + buf[8:])
        elif msg_type == ofp.OFPT_ERROR:
            error_type, code = struct.unpack_from("!HH", buf, 8)
            msg = SimpleNamespace(xid=xid, type=error_type, code=code, data=buf[12:])
            if self.switch is None or not self.switch.on_error(msg):
                self.errors.append(msg)
        elif self.switch is not None:
            flags = struct.unpack_from("!H", buf, 10)[0] if msg_type == ofp.OFPT_MULTIPART_REPLY else 0
            self.switch.on_reply(SimpleNamespace(xid=xid, flags=flags, buf=buf, type=msg_type))

    def close(self) -> None:
        self.closed = True
        self._queue.put(None)
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for thread in self._threads:
            thread.wait(5)
        self.conn.close()


def connect(rundir: Path, bridge: str, timeout: float = 60.0) -> tuple[Switch, SocketDatapath]:
    """A Switch on `bridge` of the OVS whose run directory is `rundir`."""
    dp = SocketDatapath(Path(rundir) / f"{bridge}.mgmt")
    dp.switch = Switch(dp, bridge, timeout=timeout)
    return dp.switch, dp

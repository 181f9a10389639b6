"""The switch alone: the same flow-mods, encoded before the clock starts,
written to the bridge's management socket by a bare OpenFlow client.

No controller can be faster than this on the same switch; the benchmark
reports it next to ours and ovs-ofctl's as the floor. Standard library
sockets and our own encoders; one connection per measurement.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.openflow import encode
from lisp_controller.openflow.bundle import BUNDLE_FLAGS as FLAGS

_HEADER = struct.Struct("!BBHI")
BUNDLE_ID = 0xB0


def bundle_bytes(flow_mods: list[bytes]) -> bytes:
    """One bundle of the flow-mods, xids 10, 11, ..., committed with xid 2
    and confirmed by a barrier with xid 3 (the open request is sent apart)."""
    parts = [encode.bundle_add(10 + i, BUNDLE_ID, FLAGS, m) for i, m in enumerate(flow_mods)]
    parts.append(encode.bundle_ctrl(2, BUNDLE_ID, ofp.ONF_BCT_COMMIT_REQUEST, FLAGS))
    parts.append(encode.barrier(3))
    return b"".join(parts)


def _read(sock: socket.socket, buf: bytearray) -> tuple[int, int, bytes]:
    while True:
        if len(buf) >= 8:
            version, kind, length, xid = _HEADER.unpack_from(buf)
            if len(buf) >= length:
                msg = bytes(buf[:length])
                del buf[:length]
                return kind, xid, msg
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("switch closed the connection")
        buf += data


def send_bundle(mgmt_socket: Path, payload: bytes, timeout: float = 600) -> float:
    """Seconds from the bundle's open to the barrier reply after its commit."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(mgmt_socket))
        buf = bytearray()
        sock.sendall(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, 1))
        kind, _, _ = _read(sock, buf)
        if kind != ofp.OFPT_HELLO:
            raise ConnectionError(f"expected HELLO, got type {kind}")
        started = time.perf_counter()
        sock.sendall(encode.bundle_ctrl(1, BUNDLE_ID, ofp.ONF_BCT_OPEN_REQUEST, FLAGS))
        sock.sendall(payload)
        while True:
            kind, xid, msg = _read(sock, buf)
            if kind == ofp.OFPT_ERROR:
                raise RuntimeError(f"switch error for xid {xid}: {msg[8:12].hex()}")
            if kind == ofp.OFPT_ECHO_REQUEST:
                sock.sendall(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_ECHO_REPLY, len(msg), xid) + msg[8:])
            if kind == ofp.OFPT_BARRIER_REPLY and xid == 3:
                return time.perf_counter() - started

"""Our side of one switch's socket: flow-stats replies to our own requests
are taken off the byte stream before os-ken parses them.

os-ken builds match and instruction objects for every flow of a flow-stats
reply (about 9 s for 100,000 flows here); reconcile, the deep check and
the counters need the bytes (docs/performance.rst). A `ReplyTap` stands in
for the socket of one datapath, for that connection only: os-ken's receive
loop reads from it as from the socket; every message passes through
unchanged except an OFPMP_FLOW multipart reply whose xid our `Switch` is
waiting for, which goes to the Switch as bytes instead. os-ken's parsers
and every other connection are left as they are.

Framing. The tap is put in place when the session starts, when os-ken may
already be half-way through a message. Until it knows where a message
ends it passes bytes through as asked. os-ken asks for more than a header
only for exactly the rest of a message, so once such a read is answered in
full the next byte starts a message, and from then on the tap frames the
stream itself. A flow-stats reply that arrives before (there is none: the
port description, a bigger reply, comes first) reaches the Switch through
os-ken's event, parsed the slow way.
"""
from __future__ import annotations

import struct
from typing import Callable

OFP_HEADER = struct.Struct("!BBHI")
OFPT_MULTIPART_REPLY = 19
OFPMP_FLOW = 1
_MULTIPART = struct.Struct("!HH")  # type, flags after the header
READ_SIZE = 256 * 1024
YIELD_EVERY = 2  # flow-stats messages taken between yields to the hub (about 1,000 flows, a few ms)

# (xid) -> a function taking (flags, message bytes), or None if not ours.
Claim = Callable[[int], Callable[[int, bytes], None] | None]


class ReplyTap:
    def __init__(self, sock, claim: Claim, pause: Callable[[], None] | None = None):
        self.sock = sock
        self.claim = claim
        self.pause = pause
        self.framing = False
        self.taken = 0  # messages handed to the Switch instead of os-ken
        self._in = bytearray()  # read from the switch, not framed yet
        self._out = bytearray()  # framed, for os-ken
        self._eof = False

    def __getattr__(self, name: str):
        return getattr(self.sock, name)  # sendall, shutdown, close, settimeout...

    def recv(self, size: int) -> bytes:
        if not self.framing:
            data = self.sock.recv(size)
            if size > OFP_HEADER.size and len(data) == size:
                self.framing = True  # os-ken just completed a message
            return data
        while not self._out:
            if self._eof:
                return b""
            data = self.sock.recv(READ_SIZE)  # an error leaves the buffers as they are
            if not data:
                self._eof = True
                self._out += self._in  # a truncated message: os-ken's to judge
                self._in.clear()
                continue
            self._in += data
            self._frame()
        out = bytes(self._out[:size])
        del self._out[:size]
        return out

    def _frame(self) -> None:
        buf, offset, end = self._in, 0, len(self._in)
        view = memoryview(buf)
        try:
            while end - offset >= OFP_HEADER.size:
                _version, mtype, length, xid = OFP_HEADER.unpack_from(buf, offset)
                if length < OFP_HEADER.size:  # not OpenFlow: hand everything over, stop framing
                    self._out += view[offset:]
                    offset = end
                    self.framing = False
                    break
                if end - offset < length:
                    break
                take = None
                if mtype == OFPT_MULTIPART_REPLY and length >= 16 \
                        and _MULTIPART.unpack_from(buf, offset + 8)[0] == OFPMP_FLOW:
                    take = self.claim(xid)
                if take is None:
                    self._out += view[offset:offset + length]
                else:
                    take(_MULTIPART.unpack_from(buf, offset + 8)[1], bytes(view[offset:offset + length]))
                    self.taken += 1
                    if self.pause is not None and self.taken % YIELD_EVERY == 0:
                        self.pause()
                offset += length
        finally:
            view.release()
        del buf[:offset]


def install(datapath, claim: Claim, pause: Callable[[], None] | None = None) -> ReplyTap:
    """Put a tap in front of `datapath`'s socket (once; a second call
    gives the tap a new claim)."""
    tap = datapath.socket
    if isinstance(tap, ReplyTap):
        tap.claim, tap.pause = claim, pause
        return tap
    tap = ReplyTap(datapath.socket, claim, pause)
    datapath.socket = tap
    return tap

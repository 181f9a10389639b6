"""An open ONF bundle on one switch: a big change sent as it is made,
taking effect at once on commit (docs/architecture.rst).
"""
from __future__ import annotations

import array
import time
from typing import TYPE_CHECKING

from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.openflow import encode
from lisp_controller.openflow.errors import SwitchError

if TYPE_CHECKING:
    from lisp_controller.openflow.switch import Switch

BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
SEND_CHUNK = 64 * 1024  # bytes per socket write: few greenthread switches
YIELD_EVERY = 256  # messages encoded between yields to the hub (echo replies)


class Bundle:
    """One open atomic, ordered ONF bundle. Messages go out as they are
    added, in 64 KB writes, so the switch parses them while the caller
    makes the rest; nothing takes effect before `commit`.

    Named, each message gets its own xid from a block reserved at open, so
    an error names its message by offset, whatever other requests go out
    meanwhile. Anonymous, every message has xid 0, the xid our stored
    flow-mods already carry, so a message is a cached 24-byte head plus the
    flow-mod as it is: the cheapest way to send a big change; an error then
    says only that something was refused, and the caller sends the change
    again named."""

    def __init__(self, switch: Switch, capacity: int = 0):
        self.switch = switch
        self.id = next(switch._bundle_ids) & 0xFFFFFFFF
        switch.request(lambda xid: encode.bundle_ctrl(xid, self.id, ofp.ONF_BCT_OPEN_REQUEST, BUNDLE_FLAGS),
                       "bundle open")
        self.named = capacity > 0
        self.first = switch._xid(capacity) if self.named else 0
        self.capacity = capacity
        self.count = 0  # messages added
        # Named: the cookie of each message, by offset (errors name them);
        # an array, not a list: two million at a reconnect, nothing for the
        # cyclic collector to walk, and freed in one step of C.
        self.cookies = array.array("Q")
        self._heads: dict[int, bytes] = {}  # anonymous: message head by flow-mod length
        self._chunk: list[bytes] = []
        self._size = 0
        self.waited = 0.0  # seconds spent waiting for the switch to take our writes
        switch._bundle_xids, switch._bundle_errors = (self.first, max(capacity, 1)), {}

    def add_many(self, messages, batch: bool = False) -> None:
        """Add (cookie, flow-mod with xid 0) pairs, in order. A long run
        yields to the hub every few hundred messages (echo replies); a
        `batch` is one bounded part of a stream, written out whole and at
        once: its caller yields between batches, and a yield midway would
        let the producer run ahead while the switch sits idle."""
        cookies, chunk, heads = self.cookies, self._chunk, self._heads
        every = 0 if batch else YIELD_EVERY
        for cookie, inner in messages:
            n = self.count
            self.count += 1
            if self.named:
                if n >= self.capacity:
                    raise SwitchError(f"bridge {self.switch.label}: more than {self.capacity} "
                                      "messages in one bundle")
                cookies.append(cookie)
                buf = encode.bundle_add((self.first + n) & 0xFFFFFFFF, self.id, BUNDLE_FLAGS, inner)
                chunk.append(buf)
                self._size += len(buf)
            else:
                head = heads.get(len(inner))
                if head is None:
                    head = heads[len(inner)] = encode.bundle_add(0, self.id, BUNDLE_FLAGS, inner)[:-len(inner)]
                chunk.append(head)
                chunk.append(inner)
                self._size += len(head) + len(inner)
            if self._size >= SEND_CHUNK:
                self._flush()
            if every and n % every == every - 1:
                hub.sleep(0)
        if batch:
            self._flush()

    def _flush(self) -> None:
        if self._chunk:
            data = b"".join(self._chunk)
            self._chunk.clear()  # in place: add_many holds it
            self._size = 0
            mark = time.monotonic()
            self.switch.send_paced(data)
            self.waited += time.monotonic() - mark

    def commit(self) -> tuple[bool, dict[int, object]]:
        """(committed?, the switch's errors by cookie): errors for messages
        refused, at commit or as they arrived. A refused commit changes
        nothing on the switch. Anonymous, the cookie of every error is 0."""
        sw = self.switch
        self._flush()
        try:
            sw.request(lambda xid: encode.bundle_ctrl(xid, self.id, ofp.ONF_BCT_COMMIT_REQUEST, BUNDLE_FLAGS),
                       "bundle commit", timeout=max(sw.timeout, 60.0))
            ok = True
        except SwitchError as e:
            if sw.closed or e.not_master:  # not master any more: nothing of the bundle can go
                raise
            ok = False
        # Errors for bundle messages precede the commit reply; a barrier
        # makes sure none is still in flight before we read them.
        sw.barrier()
        if not self.named:
            return ok, {0: err for err in sw._bundle_errors.values()}
        return ok, {self.cookies[offset]: err for offset, err in sw._bundle_errors.items()
                    if offset < len(self.cookies)}

    def discard(self) -> None:
        """Drop the bundle on the switch: nothing of it is applied."""
        self._chunk.clear()
        self._size = 0
        self.switch.request(lambda xid: encode.bundle_ctrl(xid, self.id, ofp.ONF_BCT_DISCARD_REQUEST,
                                                           BUNDLE_FLAGS), "bundle discard")

    def close(self) -> None:
        """Stop matching errors to this bundle's messages."""
        self.switch._bundle_xids, self.switch._bundle_errors = None, {}
        self.switch.settle_paced()

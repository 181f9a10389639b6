"""Flow statistics as the controller reads them: the fixed head of each
entry of a flow dump (cookie, packets, bytes), parsed on our side of the
socket (openflow/tap.py), and the counters by cookie summed from them.

os-ken's parser would build match and instruction objects for every flow;
reconcile and the status page's counters need none of them
(docs/performance.rst, "A free hub").
"""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.model.parted import PartedDict


class FlowStat(NamedTuple):
    """The part of an ofp_flow_stats entry we use, in wire order."""

    length: int
    table_id: int
    priority: int
    cookie: int
    packet_count: int
    byte_count: int


class FlowCounts(PartedDict):
    """Packets and bytes of flows by cookie, as a dict of (packets, bytes)
    reads (`get`, `[]`, `in`, `len`, `items`, `values`), kept so that a
    million of them cost the hub nothing between reads (docs/performance.rst,
    "A free hub"):

    - each flow's pair is one int, bytes above `PACKETS_BITS` and packets
      below: ints are not tracked by Python's cyclic collector, so neither
      is a dict of them; a tuple per cookie was a million tracked objects,
      whose making started full collections of 0.4 to 0.6 s. Packed
      values add as their pairs do, so the bridges' counters are summed
      with one + (OpenFlow's counters have 64 bits: the packets of 2**32
      bridges summed still fit below the bytes);
    - they are a `PartedDict` (model/parted.py): filling one dict up to a
      million entries doubled its table now and then in one step the hub
      cannot interrupt (33 ms at 700,000 entries here, 67 at 1,400,000),
      and the previous counters, let go of at each refresh, are let go of
      a part at a time (controller/counters.py)."""

    PACKETS_BITS = 96
    _PACKETS = (1 << PACKETS_BITS) - 1
    __slots__ = ()

    def add(self, cookie: int, packets: int, nbytes: int) -> None:
        part = self.parts[cookie % self.PARTS]
        part[cookie] = part.get(cookie, 0) + (nbytes << self.PACKETS_BITS | packets)

    def _pair(self, value: int) -> tuple[int, int]:
        return value & self._PACKETS, value >> self.PACKETS_BITS

    def __getitem__(self, cookie: int) -> tuple[int, int]:
        return self._pair(self.parts[cookie % self.PARTS][cookie])

    def get(self, cookie: int, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        value = self.parts[cookie % self.PARTS].get(cookie)
        return default if value is None else self._pair(value)

    def items(self) -> Iterator[tuple[int, tuple[int, int]]]:  # type: ignore[override]
        pair = self._pair
        for part in self.parts:
            for cookie, value in part.items():
                yield cookie, pair(value)

    def values(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return map(self._pair, super().values())


# ofp_flow_stats up to the match, skipping what we do not use: length,
# table, pad, duration (8), priority, idle/hard/flags (6), pad (4), cookie,
# packets, bytes.
_FLOW_STATS_HEAD = struct.Struct("!HBx8xH6x4xQQQ")


def flow_stats(buf: bytes) -> list[FlowStat]:
    """The fixed head of each entry of one OFPMP_FLOW multipart reply
    message: reconcile and the counters need nothing else, and os-ken's
    parser would build match and instruction objects for every flow."""
    end = min(len(buf), struct.unpack_from("!H", buf, 2)[0])
    body = []
    unpack, make, append = _FLOW_STATS_HEAD.unpack_from, FlowStat._make, body.append
    offset = ofp.OFP_MULTIPART_REPLY_SIZE
    while offset + _FLOW_STATS_HEAD.size <= end:
        entry = make(unpack(buf, offset))
        if entry.length < _FLOW_STATS_HEAD.size:
            raise ValueError(f"flow-stats entry of {entry.length} bytes at offset {offset}")
        append(entry)
        offset += entry.length
    return body


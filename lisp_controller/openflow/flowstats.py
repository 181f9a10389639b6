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


class FlowStat(NamedTuple):
    """The part of an ofp_flow_stats entry we use, in wire order."""

    length: int
    table_id: int
    priority: int
    cookie: int
    packet_count: int
    byte_count: int


class FlowCounts:
    """Packets and bytes of flows by cookie, as a dict of (packets, bytes)
    reads (`get`, `in`, `len`, `items`), kept so that a million of them
    cost the hub nothing between reads (docs/performance.rst, "A free
    hub"):

    - each flow's pair is one int, bytes above `PACKETS_BITS` and packets
      below: ints are not tracked by Python's cyclic collector, so neither
      is a dict of them; a tuple per cookie was a million tracked objects,
      whose making started full collections of 0.4 to 0.6 s. Packed
      values add as their pairs do, so the bridges' counters are summed
      with one + (OpenFlow's counters have 64 bits: the packets of 2**32
      bridges summed still fit below the bytes);
    - they are kept in `PARTS` dicts by the cookie's low bits (a content
      hash: the parts fill evenly). One dict filling up to a million
      entries doubles its table now and then, moving every entry in one
      step the hub cannot interrupt (33 ms at 700,000 entries here, 67 at
      1,400,000, and twice that on a loaded machine, once per refresh); a
      part of a million counters holds 4,000."""

    PARTS = 256
    PACKETS_BITS = 96
    _PACKETS = (1 << PACKETS_BITS) - 1
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[dict[int, int]] = [{} for _ in range(self.PARTS)]

    def add(self, cookie: int, packets: int, nbytes: int) -> None:
        part = self.parts[cookie % self.PARTS]
        part[cookie] = part.get(cookie, 0) + (nbytes << self.PACKETS_BITS | packets)

    def get(self, cookie: int, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        value = self.parts[cookie % self.PARTS].get(cookie)
        return default if value is None else (value & self._PACKETS, value >> self.PACKETS_BITS)

    def __contains__(self, cookie: object) -> bool:
        return isinstance(cookie, int) and cookie in self.parts[cookie % self.PARTS]

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def items(self) -> Iterator[tuple[int, tuple[int, int]]]:
        for part in self.parts:
            for cookie in part:
                yield cookie, self.get(cookie)


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


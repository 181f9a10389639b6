"""A fake OpenFlow 1.3 pipeline for unit tests: where does a packet go?

It walks our compiled flows the way OVS would (highest priority match per
table, apply actions, follow goto_table and resubmit, pick a group's bucket
by a hash of the packet's flow) for the fields our compiler uses; what each
action does is its kind's `trace` (pipeline/actions.py).
It complements, never replaces, the tests against a real ovs-vswitchd.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from lisp_controller.pipeline import actions
from lisp_controller.pipeline.flows import Flow
from lisp_controller.model import Prefix


@dataclass
class Result:
    outputs: list = field(default_factory=list)  # port numbers, or "NORMAL"/"CONTROLLER"/"IN_PORT"
    packet: dict = field(default_factory=dict)  # fields when the packet left
    path: list = field(default_factory=list)  # (table, priority) visited

    @property
    def dropped(self) -> bool:
        return not self.outputs


def _matches(flow: Flow, pkt: dict) -> bool:
    for name, want in flow.match:
        have = pkt.get(name)
        if have is None:
            return False
        if isinstance(want, (Prefix, ipaddress.IPv4Network, ipaddress.IPv6Network)):
            addr = ipaddress.ip_address(have)
            if addr.version != want.version or addr not in want:
                return False
        elif isinstance(want, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            if ipaddress.ip_address(have) != want:
                return False
        elif have != want:
            return False
    return True


def trace(flows, packet: dict, table: int = 0) -> Result:
    """Where `packet` goes from `table`. `packet` holds match fields, and
    "frame_len" (the Ethernet frame's length, default 64) for
    check_pkt_larger. `Result.packet` is the packet as it left by its last
    output (a group's bucket acts on a copy)."""
    flows = list(flows.values()) if isinstance(flows, dict) else list(flows)
    pkt = dict(packet)
    pkt.setdefault("metadata", 0)
    pkt.setdefault("reg0", 0)
    pkt.setdefault("tun_ipv4_dst", "0.0.0.0")  # OVS: an unset tunnel destination is zero
    result = Result()

    def walk(table: int, pkt: dict, outputs: list) -> None:
        for _ in range(16):
            candidates = [f for f in flows if f.table == table and _matches(f, pkt)]
            if not candidates:
                return  # table miss without a miss rule: OpenFlow 1.3 drops
            best = max(f.priority for f in candidates)
            top = [f for f in candidates if f.priority == best]
            assert len(top) == 1, f"ambiguous flows at table {table} priority {best}: {top}"
            flow = top[0]
            result.path.append((table, flow.priority))
            next_table = actions.next_table(flow.actions)
            for action in flow.actions:
                sent = len(outputs)
                alive = actions.kind(action).trace(action, pkt, outputs)
                if len(outputs) > sent and action[0] != "group":
                    result.packet = {k: v for k, v in pkt.items() if k != "_walk"}
                if not alive:
                    return  # the datapath dropped it here
            if next_table is None:
                return
            table = next_table

    pkt["_walk"] = walk  # resubmit (in a group's bucket) walks from another table
    walk(table, pkt, result.outputs)
    if not result.outputs:
        result.packet = {k: v for k, v in pkt.items() if k != "_walk"}
    return result

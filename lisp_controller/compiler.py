"""Pure compiler: (bridge, port numbers, overlay) -> the flows it should hold.

Table 0 keeps the OVS LISP recipe's priorities 3/2/1/0; longest-prefix
match and per-endpoint delivery live in later tables so they never compete
for one priority (DESIGN.md section 4). The map-cache table holds no port
numbers, so `compile_map_cache` runs once and every bridge shares its flows.
"""
from __future__ import annotations

import ipaddress
from typing import Mapping as TMapping, NamedTuple

from .flows import (ETH_ARP, ETH_IP, ETH_IPV6, IPPROTO_ICMPV6, NORMAL, ND_ADVERT,
                    ND_SOLICIT, TO_CONTROLLER, Flow, goto, keyed, output,
                    set_field, write_metadata)
from .model import Bridge, MapCache, Mapping, Overlay
from .profiles import PROFILES

T_CLASSIFY, T_MAPCACHE, T_EGRESS, T_DECAP, T_ARP = 0, 1, 2, 3, 4
TABLE_NAMES = {T_CLASSIFY: "classify", T_MAPCACHE: "map-cache", T_EGRESS: "egress",
               T_DECAP: "decap", T_ARP: "arp"}

# map-cache priorities: base + prefix length, so longer prefixes win; a
# bridge's own EIDs sit above every prefix.
PRIO_PREFIX_BASE = 100
PRIO_LOCAL_EID = PRIO_PREFIX_BASE + 129 + 1


class Compiled(NamedTuple):
    flows: dict[int, Flow]  # by cookie
    missing_ports: tuple[str, ...]  # configured ports the bridge does not have


def _eth_type(version: int) -> int:
    return ETH_IP if version == 4 else ETH_IPV6


def _dst_field(version: int) -> str:
    return "ipv4_dst" if version == 4 else "ipv6_dst"


def _tun_dst_field(version: int) -> str:
    return "tun_ipv4_dst" if version == 4 else "tun_ipv6_dst"


def _miss_actions(action: str) -> tuple:
    """What a negative entry or a map-cache miss does. no-action keeps the
    packet unencapsulated, which on a bridge means NORMAL, like
    native-forward; send-map-request is a packet-in until a LISP control
    plane exists."""
    if action in ("no-action", "native-forward"):
        return (NORMAL,)
    if action == "send-map-request":
        return (TO_CONTROLLER,)
    return ()  # drop


def mapping_flow(m: Mapping) -> Flow:
    v = m.eid.version
    match = (("eth_type", _eth_type(v)), ("metadata", m.iid), (_dst_field(v), m.eid))
    rloc = m.best_rloc()
    if rloc is None:
        actions = _miss_actions(m.action)
    else:
        actions = (set_field(_tun_dst_field(rloc.address.version), rloc.address),
                   set_field("tunnel_id", m.iid), goto(T_EGRESS))
    return Flow(T_MAPCACHE, PRIO_PREFIX_BASE + m.eid.prefixlen, match, actions)


def miss_flow(miss_action: str) -> Flow:
    return Flow(T_MAPCACHE, 0, (), _miss_actions(miss_action))


def compile_map_cache(cache: MapCache, miss_action: str) -> dict[int, Flow]:
    """The shared map-cache table: one flow per mapping, plus the miss rule,
    keyed by cookie once for all bridges."""
    flows = [mapping_flow(m) for m in cache]
    flows.append(miss_flow(miss_action))
    return keyed(flows)


def compile_overlay(overlay: Overlay) -> dict[int, Flow]:
    """The shared map-cache flows of a whole (static) overlay."""
    return compile_map_cache(overlay.map_cache(), overlay.miss_action)


def compile_bridge(bridge: Bridge, ports: TMapping[str, int], shared: TMapping[int, Flow]) -> Compiled:
    """All flows for one bridge: the shared map-cache flows plus its own.
    `ports` maps port names to OpenFlow port numbers as the bridge reports
    them; a configured port the bridge lacks is reported in `missing_ports`
    and its flows are left out."""
    flows: list[Flow] = []
    missing: list[str] = []
    profile = PROFILES[bridge.profile]

    tunnel = ports.get(bridge.tunnel_port)
    if tunnel is None:
        missing.append(bridge.tunnel_port)
    else:
        flows.append(Flow(T_CLASSIFY, 3, (("in_port", tunnel), ("eth_dst", profile.decap_mac)),
                          (goto(T_DECAP),)))
    flows.append(Flow(T_CLASSIFY, 0, (), (NORMAL,)))

    for ep in bridge.endpoints:
        port = ports.get(ep.port)
        if port is None:
            missing.append(ep.port)
            continue
        flows += [
            Flow(T_CLASSIFY, 2, (("in_port", port), ("eth_type", ETH_ARP)), (goto(T_ARP),)),
            *(Flow(T_CLASSIFY, 2, (("in_port", port), ("eth_type", ETH_IPV6),
                                   ("ip_proto", IPPROTO_ICMPV6), ("icmpv6_type", nd)),
                   (goto(T_ARP),)) for nd in (ND_SOLICIT, ND_ADVERT)),
            *(Flow(T_CLASSIFY, 1, (("in_port", port), ("eth_type", eth), ("vlan_vid", 0)),
                   (write_metadata(ep.iid), goto(T_MAPCACHE))) for eth in (ETH_IP, ETH_IPV6)),
        ]
        for addr in ep.eids:
            host = ipaddress.ip_network(addr)
            v = host.version
            flows.append(Flow(T_MAPCACHE, PRIO_LOCAL_EID,
                              (("eth_type", _eth_type(v)), ("metadata", ep.iid), (_dst_field(v), host)),
                              (set_field("tunnel_id", ep.iid), goto(T_DECAP))))
            flows.append(Flow(T_DECAP, 10,
                              (("eth_type", _eth_type(v)), ("tunnel_id", ep.iid), (_dst_field(v), host)),
                              (set_field("eth_src", bridge.router_mac), set_field("eth_dst", ep.mac),
                               output(port))))

    # An RLOC equal to our own is never a tunnel target: deliver locally.
    own = (_tun_dst_field(bridge.rloc.version), bridge.rloc)
    flows.append(Flow(T_EGRESS, 10, (own,), (goto(T_DECAP),)))
    flows.append(Flow(T_EGRESS, 0, (), (output(tunnel),) if tunnel is not None else ()))
    flows.append(Flow(T_DECAP, 0, (), ()))
    flows.append(Flow(T_ARP, 0, (), (NORMAL,)))
    return Compiled({**shared, **keyed(flows)}, tuple(missing))

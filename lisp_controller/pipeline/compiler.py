"""Pure compiler: (bridge, port numbers, overlay) -> the flows it should hold.

Table 0 keeps the OVS LISP recipe's priorities 3/2/1/0; longest-prefix
match and per-endpoint delivery live in later tables so they never compete
for one priority (docs/datapath.rst, "The pipeline"). The map-cache table holds no port
numbers, so `compile_map_cache` runs once and every bridge shares its flows.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping as TMapping, NamedTuple

from lisp_controller.openflow import wire
from lisp_controller.pipeline.actions import (DEC_TTL, IN_PORT, NORMAL, TO_CONTROLLER, check_pkt_larger, goto,
                                              group, groups_in, meter, move, output, resubmit, set_field,
                                              write_metadata)
from lisp_controller.pipeline.flows import (COOKIE_BASE, ETH_ARP, ETH_IP, ETH_IPV6, IPPROTO_ICMPV6, ND_ADVERT,
                                            ND_SOLICIT, Bucket, Flow, Group, Meter, flow_mod_add, keyed,
                                            select_group)
from lisp_controller.model import PRIORITY_UNUSED, Bridge, Endpoint, MapCache, Mapping, Overlay
from lisp_controller.pipeline.profiles import PROFILES, tunnel_mtu

T_CLASSIFY, T_MAPCACHE, T_EGRESS, T_DECAP, T_ARP, T_TOO_BIG = 0, 1, 2, 3, 4, 5

# Path MTU discovery (docs/mtu.rst): packets too big for the tunnel go to
# the controller through this meter, at most TOO_BIG_PPS a second (and a
# burst of TOO_BIG_BURST), so a flood of them cannot load the controller.
METER_TOO_BIG = 0x4C
TOO_BIG_PPS, TOO_BIG_BURST = 100, 50
ETH_HEADER = 14  # check_pkt_larger counts the Ethernet header; the tunnel does not carry it

# map-cache priorities: base + prefix length, so longer prefixes win; a
# bridge's own EIDs sit above every prefix.
PRIO_PREFIX_BASE = 100
PRIO_LOCAL_EID = PRIO_PREFIX_BASE + 129 + 1

# ARP table: a VM asking for its own address (gratuitous ARP, duplicate
# address probes) is never answered; the gateway answer outranks any EID;
# local EIDs outrank the map-cache prefixes, which keep their LPM order.
PRIO_ARP_OWN = PRIO_LOCAL_EID + 20
PRIO_ARP_GATEWAY = PRIO_LOCAL_EID + 10
ARP_REQUEST, ARP_REPLY = 1, 2
# decap: a packet from the tunnel for a routed endpoint (one with a
# gateway) is routed by this xTR, so its TTL drops by one here.
PRIO_DECAP, PRIO_DECAP_ROUTED = 10, 11


class Compiled(NamedTuple):
    flows: dict[int, Flow]  # by cookie
    missing_ports: tuple[str, ...]  # configured ports the bridge does not have


def _eth_type(version: int) -> int:
    return ETH_IP if version == 4 else ETH_IPV6


def _dst_field(version: int) -> str:
    return "ipv4_dst" if version == 4 else "ipv6_dst"


def _tun_dst_field(version: int) -> str:
    return "tun_ipv4_dst" if version == 4 else "tun_ipv6_dst"


# Map-cache misses to resolve go to the controller through this meter, at
# most MISS_PPS a second per bridge (and a burst of MISS_BURST), so a flood
# of misses cannot swamp the controller (docs/control-plane.rst).
METER_MISS = 0x4D
MISS_PPS, MISS_BURST = 3000, 1000


def _miss_actions(action: str) -> tuple:
    """What a negative entry or a map-cache miss does. no-action keeps the
    packet unencapsulated, which on a bridge means NORMAL, like
    native-forward; send-map-request hands the packet to the controller
    (metered), which asks the map-resolvers (lisp/resolver.py)."""
    if action in ("no-action", "native-forward"):
        return (NORMAL,)
    if action == "send-map-request":
        return (meter(METER_MISS), TO_CONTROLLER)
    return ()  # drop


def rloc_target(m: Mapping) -> "ipaddress.IPv4Address | ipaddress.IPv6Address | Group | str":
    """What a mapping's flow sends to: its one RLOC's address, the select
    group of its RLOC set (several RLOCs of the best priority share the
    traffic by weight, RFC 9300), or, with no usable RLOC, its action."""
    rlocs = m.rlocs
    if len(rlocs) == 1 and rlocs[0].priority != PRIORITY_UNUSED:  # the common case, first
        return rlocs[0].address
    last = _LAST  # the state asks twice in a row for one mapping (its flow, its group)
    if last[0] is rlocs:
        target = last[1]
    else:
        target = _TARGETS.get(rlocs, _UNKNOWN)  # a bulk of mappings shares few RLOC sets
        if target is _UNKNOWN:
            if len(_TARGETS) > 65536:
                _TARGETS.clear()
            target = _TARGETS[rlocs] = _set_target(m.rloc_shares())
        last[0], last[1] = rlocs, target
    return m.action if target is None else target


def _set_target(shares: tuple) -> "ipaddress.IPv4Address | ipaddress.IPv6Address | Group | None":
    if not shares:
        return None
    if len(shares) == 1:
        return shares[0][0]
    return select_group(tuple(
        Bucket(weight, (set_field(_tun_dst_field(address.version), address), resubmit(T_EGRESS)))
        for address, weight in shares))


_TARGETS: dict[tuple, object] = {}  # RLOCs -> what their mappings send to (None: nothing)
_UNKNOWN = object()
_LAST: list = [None, None]  # the last (RLOCs, target) looked up


def mapping_group(m: Mapping) -> Group | None:
    """The select group a mapping's flow uses, if any."""
    if len(m.rlocs) < 2:
        return None
    target = rloc_target(m)
    return target if type(target) is Group else None


def groups_of(flows: Iterable[Flow]) -> dict[int, Group]:
    """The groups `flows` use, by ID."""
    return {g.group_id: g for f in flows for g in groups_in(f.actions)}


def _target_key(target: object) -> object:
    """A cheap dict key for a target: a group by its ID (hashing a whole
    group would hash every bucket each time)."""
    return target.group_id if type(target) is Group else target


def mapping_flow(m: Mapping) -> Flow:
    v = m.eid.version
    head = _SHARED.get((v, m.iid))  # (eth_type, metadata) pairs, the same for a whole IID
    if head is None:
        head = _SHARED[(v, m.iid)] = (("eth_type", _eth_type(v)), ("metadata", m.iid))
    target = rloc_target(m)
    key = (m.iid, _target_key(target))
    actions = _SHARED.get(key)  # thousands of mappings share one RLOC and IID
    if actions is None:
        if type(target) is str:
            actions = _miss_actions(target)
        elif type(target) is Group:
            # The bucket sets the RLOC and resubmits to egress; the tunnel
            # key is the same for every bucket, so it is set here.
            actions = (set_field("tunnel_id", m.iid), group(target))
        else:
            actions = (set_field(_tun_dst_field(target.version), target),
                       set_field("tunnel_id", m.iid), goto(T_EGRESS))
        if len(_SHARED) > 65536:
            _SHARED.clear()
        _SHARED[key] = actions
    return Flow(T_MAPCACHE, PRIO_PREFIX_BASE + m.eid.prefixlen, head + ((_dst_field(v), m.eid),), actions)


# Equal sub-tuples of map-cache flows, shared so that a million mappings do
# not hold a million copies (values, so sharing them changes nothing else).
_SHARED: dict[tuple, tuple] = {}


def mapping_flow_mod(m: Mapping, key: tuple[int, int, int, int]) -> tuple[int, bytes]:
    """`flows.encoded(mapping_flow(m))`, made from a template: mappings of
    one IID, target (RLOC or group) and prefix length differ only in the
    prefix's address bytes, so the template holds the bytes around them
    and the content hash of the bytes before them. `key` is the mapping's
    `model.prefix_key`. This is the hot path of a bulk change (a test holds
    it equal to the general one)."""
    _, version, network, length = key
    rlocs = m.rlocs
    if len(rlocs) == 1 and rlocs[0].priority != PRIORITY_UNUSED:  # rloc_target's common case, inline
        target = rlocs[0].address
    else:
        target = _target_key(rloc_target(m))
    shape = (m.iid, target, version, length)
    template = _TEMPLATES.get(shape)
    if template is None:
        if len(_TEMPLATES) > 65536:
            _TEMPLATES.clear()
        flow = mapping_flow(m)
        before, after = wire.value_slot(flow_mod_add(flow, 0), flow.match, _dst_field(version))
        template = _TEMPLATES[shape] = (before[:8], before[16:], after, wire.content_hasher(before),
                                        4 if version == 4 else 16)
    head, middle, after, hasher, width = template
    address = network.to_bytes(width, "big")
    digest = hasher.copy()
    digest.update(address)
    digest.update(after)
    cookie = COOKIE_BASE | int.from_bytes(digest.digest(), "big")
    return cookie, b"".join((head, cookie.to_bytes(8, "big"), middle, address, after))


_TEMPLATES: dict[tuple, tuple] = {}


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


def arp_reply(iid: int, target: ipaddress.IPv4Network, mac: str, priority: int) -> Flow:
    """An ARP responder flow (the standard OVS one): a request from a port
    of `iid` for an address in `target` is turned into the reply `mac`
    would send and goes back out of the port it came in on. The asked
    address is swapped through reg0, so one flow answers a whole prefix."""
    match = (("eth_type", ETH_ARP), ("metadata", iid), ("arp_op", ARP_REQUEST),
             ("arp_tpa", target))
    actions = (move("eth_src", "eth_dst"), set_field("eth_src", mac),
               set_field("arp_op", ARP_REPLY), move("arp_sha", "arp_tha"),
               set_field("arp_sha", mac), move("arp_tpa", "reg0"),
               move("arp_spa", "arp_tpa"), move("reg0", "arp_spa"), IN_PORT)
    return Flow(T_ARP, priority, match, actions)


def rlocs_of(actions: tuple) -> list:
    """The RLOCs a flow's actions tunnel to, its group's buckets included."""
    lists = [actions, *(b.actions for g in groups_in(actions) for b in g.buckets)]
    return [a[2] for acts in lists for a in acts if a[0] == "set_field" and a[1] in ("tun_ipv4_dst", "tun_ipv6_dst")]


def _map_cache_ipv4(shared: dict[int, Flow], own_rloc: object) -> list[tuple[int, ipaddress.IPv4Network, bool]]:
    """(IID, prefix, tunnelled?) of every IPv4 map-cache flow; tunnelled
    means sent into the tunnel towards another RLOC (for an RLOC set, any
    of them). Proxy ARP answers exactly for those and, at the same
    longest-prefix priority, refuses the rest (negative entries inside a
    wider prefix), so it never promises a
    destination the map-cache would drop. Read from the forwarding flows
    themselves, so the two cannot disagree."""
    out = []
    for f in shared.values():
        match = dict(f.match)
        if f.table != T_MAPCACHE or match.get("eth_type") != ETH_IP:
            continue
        out.append((match["metadata"], match["ipv4_dst"], any(r != own_rloc for r in rlocs_of(f.actions))))
    return out


def _arp_flows(bridge: Bridge, ports: TMapping[str, int], shared: dict[int, Flow]) -> list[Flow]:
    """Table 4. Gateways are always answered (scenario 3). With proxy ARP
    (scenario 2) every EID of the asking port's IID is answered: local
    ones with the endpoint's MAC, remote ones with the router MAC, and
    other ARP is dropped rather than flooded to other tenants' VMs."""
    flows: list[Flow] = []
    for ep in bridge.endpoints:
        if ep.gateway is not None:
            flows.append(arp_reply(ep.iid, ipaddress.ip_network(ep.gateway), bridge.router_mac,
                                   PRIO_ARP_GATEWAY))
    if bridge.proxy_arp:
        for ep in bridge.endpoints:
            port = ports.get(ep.port)
            for addr in ep.eids:
                if addr.version != 4:
                    continue
                host = ipaddress.ip_network(addr)
                flows.append(arp_reply(ep.iid, host, ep.mac, PRIO_LOCAL_EID))
                if port is not None:
                    flows.append(Flow(T_ARP, PRIO_ARP_OWN, (("in_port", port), ("eth_type", ETH_ARP),
                                                            ("arp_tpa", host)), ()))
        for iid, prefix, tunnelled in _map_cache_ipv4(shared, bridge.rloc):
            prio = PRIO_PREFIX_BASE + prefix.prefixlen
            flows.append(arp_reply(iid, prefix, bridge.router_mac, prio) if tunnelled else
                         Flow(T_ARP, prio, (("eth_type", ETH_ARP), ("metadata", iid),
                                            ("arp_tpa", prefix)), ()))
        flows.append(Flow(T_ARP, 1, (("eth_type", ETH_ARP),), ()))
    flows.append(Flow(T_ARP, 0, (), (NORMAL,)))
    return flows


NO_IPV4_RLOC = ipaddress.IPv4Address(0)  # tun_ipv4_dst of a packet given an IPv6 RLOC


def _egress_flows(bridge: Bridge, tunnel: int | None) -> list[Flow]:
    """Tables 2 and 5: into the tunnel, unless the RLOC is our own (deliver
    locally) or the packet is bigger than the tunnel can carry towards an
    RLOC of that family (check_pkt_larger), in which case it goes to the
    controller through the meter, which answers the sender (pathmtu.py)."""
    own = (_tun_dst_field(bridge.rloc.version), bridge.rloc)
    flows = [Flow(T_EGRESS, 10, (own,), (goto(T_DECAP),))]
    for priority, match, version in ((1, (("tun_ipv4_dst", NO_IPV4_RLOC),), 6), (0, (), 4)):
        limit = tunnel_mtu(bridge.underlay_mtu, bridge.profile, version) + ETH_HEADER
        flows.append(Flow(T_EGRESS, priority, match, (check_pkt_larger(limit), goto(T_TOO_BIG))))
    flows.append(Flow(T_TOO_BIG, 10, (("reg0", 1),), (meter(METER_TOO_BIG), TO_CONTROLLER)))
    flows.append(Flow(T_TOO_BIG, 0, (), (output(tunnel),) if tunnel is not None else ()))
    return flows


def compile_meters(bridge: Bridge) -> dict[int, Meter]:
    """The meters a bridge should hold, by meter ID: the ones that pace
    too-big packets and map-cache misses to the controller."""
    return {METER_TOO_BIG: Meter(METER_TOO_BIG, TOO_BIG_PPS, TOO_BIG_BURST),
            METER_MISS: Meter(METER_MISS, MISS_PPS, MISS_BURST)}


def _routed(ep: Endpoint) -> tuple:
    """A VM with a gateway sends its packets to this xTR as its router."""
    return (DEC_TTL,) if ep.gateway is not None else ()


def compile_bridge(bridge: Bridge, ports: TMapping[str, int], shared: TMapping[int, Flow]) -> Compiled:
    """All flows for one bridge: the shared map-cache flows plus its own."""
    own = compile_local(bridge, ports, shared)
    return Compiled({**shared, **own.flows}, own.missing_ports)


def compile_local(bridge: Bridge, ports: TMapping[str, int], shared: TMapping[int, Flow]) -> Compiled:
    """The bridge's own flows, without the shared ones (the controller
    sends those from bytes made once for every bridge). `ports` maps port
    names to OpenFlow port numbers as the bridge reports them; a configured
    port the bridge lacks is reported in `missing_ports` and its flows are
    left out. `shared` is read only for proxy ARP."""
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
        # The ARP table learns the asking port's IID from the metadata.
        to_arp = (write_metadata(ep.iid), goto(T_ARP))
        flows += [
            Flow(T_CLASSIFY, 2, (("in_port", port), ("eth_type", ETH_ARP)), to_arp),
            *(Flow(T_CLASSIFY, 2, (("in_port", port), ("eth_type", ETH_IPV6),
                                   ("ip_proto", IPPROTO_ICMPV6), ("icmpv6_type", nd)),
                   to_arp) for nd in (ND_SOLICIT, ND_ADVERT)),
            *(Flow(T_CLASSIFY, 1, (("in_port", port), ("eth_type", eth), ("vlan_vid", 0)),
                   (*_routed(ep), write_metadata(ep.iid), goto(T_MAPCACHE)))
              for eth in (ETH_IP, ETH_IPV6)),
        ]
        for addr in ep.eids:
            host = ipaddress.ip_network(addr)
            v = host.version
            flows.append(Flow(T_MAPCACHE, PRIO_LOCAL_EID,
                              (("eth_type", _eth_type(v)), ("metadata", ep.iid), (_dst_field(v), host)),
                              (set_field("tunnel_id", ep.iid), goto(T_DECAP))))
            match = (("eth_type", _eth_type(v)), ("tunnel_id", ep.iid), (_dst_field(v), host))
            deliver = (set_field("eth_src", bridge.router_mac), set_field("eth_dst", ep.mac),
                       output(port))
            flows.append(Flow(T_DECAP, PRIO_DECAP, match, deliver))
            # Local delivery was already routed (TTL - 1) at ingress: only a
            # packet from the tunnel is decremented here, once per xTR.
            if _routed(ep) and tunnel is not None:
                flows.append(Flow(T_DECAP, PRIO_DECAP_ROUTED, (("in_port", tunnel), *match),
                                  (*_routed(ep), *deliver)))

    flows += _egress_flows(bridge, tunnel)
    flows.append(Flow(T_DECAP, 0, (), ()))
    flows += _arp_flows(bridge, ports, shared)
    return Compiled(keyed(flows), tuple(missing))

"""The overlay in the config file: the ``[[bridge]]`` tables with their
endpoints and the certificate each switch must present, and the static
``[[mapping]]`` tables. Bridges are checked against each other too: any
ambiguity between them would send traffic to the wrong hypervisor."""
from __future__ import annotations

import hashlib

from lisp_controller.config.controller import TLS_KEYS
from lisp_controller.model import (Bridge, Endpoint, Mapping, ModelError, datapath_id_of, parse_bool, parse_gateway,
                                   parse_iid, parse_int, parse_interface_name, parse_mac, parse_rloc_address)
from lisp_controller.openflow.tls import TlsPeer, parse_tls_peer
from lisp_controller.pipeline.profiles import DEFAULT_PROFILE, DEFAULT_UNDERLAY_MTU, PROFILES

_BRIDGE_KEYS = {"datapath_id", "name", "rloc", "tunnel_port", "tunnel_profile", "iid",
                "router_mac", "endpoint", "proxy_arp", "gateway", "underlay_mtu", "too_big_without_df",
                "tls_peer"}
# An underlay below IPv6's minimum link MTU could not carry IPv6 RLOCs, and
# one above 65535 does not exist (docs/mtu.rst).
MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU = 1280, 65535
TOO_BIG_WITHOUT_DF = ("drop", "fragment")


def parse_bridges(data: dict, tls: bool, problems: list[str], where: str) -> tuple[list[Bridge], dict[int, TlsPeer]]:
    """The ``[[bridge]]`` tables, and the certificate each bridge's switch
    must present by datapath ID. ``tls``: OpenFlow's TLS files were given."""
    bridges: list[Bridge] = []
    raw_bridges = data.get("bridge", [])
    if not isinstance(raw_bridges, list):
        problems.append(f"{where}: bridge: must be an array of tables ([[bridge]])")
        raw_bridges = []
    tls_peers: dict[int, TlsPeer] = {}
    for i, raw in enumerate(raw_bridges):
        bridge = _parse_bridge(raw, f"bridge[{i}]", problems, where)
        if bridge is not None:
            bridges.append(bridge)
            if isinstance(raw, dict) and "tls_peer" in raw:
                peer = _parse_bridge_peer(raw["tls_peer"], bridge, f"bridge[{i}].tls_peer", tls, problems, where)
                if peer is not None:
                    tls_peers[bridge.datapath_id] = peer
    _check_bridges_unique(bridges, problems, where)
    if not raw_bridges and _needs_a_bridge(data):
        problems.append(f"{where}: bridge: no [[bridge]] given; the controller needs at least one "
                        "bridge to manage")
    return bridges, tls_peers


def parse_mappings(data: dict, problems: list[str], where: str) -> list[Mapping]:
    """The static ``[[mapping]]`` tables: one mapping per EID-prefix and IID."""
    mappings: list[Mapping] = []
    raw_maps = data.get("mapping", [])
    if not isinstance(raw_maps, list):
        problems.append(f"{where}: mapping: must be an array of tables ([[mapping]])")
        raw_maps = []
    seen: dict[tuple, int] = {}
    for i, raw in enumerate(raw_maps):
        try:
            m = Mapping.parse(raw, f"mapping[{i}]", source="config")
        except ModelError as e:
            problems.append(f"{where}: {e}")
            continue
        if m.key in seen:
            problems.append(f"{where}: mapping[{i}].eid: {m.eid} in IID {m.iid} is already "
                            f"mapped by mapping[{seen[m.key]}]")
        seen[m.key] = i
        mappings.append(m)
    return mappings


def parse_datapath_id(value: object, field: str = "datapath_id") -> int:
    """16 hex digits as `ovs-ofctl show` prints them (colons and 0x allowed),
    or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        dpid = value
    elif isinstance(value, str):
        dpid = datapath_id_of(value)
        if dpid is None:
            raise ModelError(field, f"{value!r} is not a hexadecimal datapath ID")
    else:
        raise ModelError(field, f"must be a hex string like '00008ad828ce7949', got {value!r}")
    if not 0 < dpid < 2**64:
        raise ModelError(field, f"{value!r} is out of range (1 to 2^64-1)")
    return dpid


def default_router_mac(identity: str) -> str:
    """A stable, locally administered MAC per bridge: VMs cache it, so it
    must not change when the controller restarts."""
    digest = hashlib.blake2b(identity.encode(), digest_size=4).digest()
    return "02:4c:" + ":".join(f"{b:02x}" for b in digest)


def _parse_profile(value: object, field: str) -> str:
    if value not in PROFILES:
        raise ModelError(field, f"must be one of {', '.join(PROFILES)}, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_underlay_mtu(value: object, field: str) -> int:
    return parse_int(value, field, MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU)


def _parse_too_big_without_df(value: object, field: str) -> str:
    if value not in TOO_BIG_WITHOUT_DF:
        raise ModelError(field, f"must be one of {', '.join(TOO_BIG_WITHOUT_DF)}, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_bridge(raw: object, field: str, problems: list[str], where: str) -> Bridge | None:
    def problem(e: ModelError) -> None:
        problems.append(f"{where}: {e}")

    if not isinstance(raw, dict):
        problems.append(f"{where}: {field}: must be a table ([[bridge]])")
        return None
    for key in sorted(set(raw) - _BRIDGE_KEYS):
        problems.append(f"{where}: {field}.{key}: unknown key")
    ok = True

    def optional(key: str, parse, default):
        """raw[key] parsed, or `default` when absent or bad (bad is reported)."""
        nonlocal ok
        if key not in raw:
            return default
        try:
            return parse(raw[key], f"{field}.{key}")
        except ModelError as e:
            problem(e)
            ok = False
            return default

    dpid = optional("datapath_id", parse_datapath_id, None)
    name = optional("name", parse_interface_name, None)  # the bridge's LOCAL port
    if dpid is None and name is None and "datapath_id" not in raw and "name" not in raw:
        problem(ModelError(field, "needs datapath_id or name to identify the bridge"))
        ok = False
    rloc = optional("rloc", parse_rloc_address, None)
    if "rloc" not in raw:
        problem(ModelError(f"{field}.rloc", "is required (the bridge's underlay address)"))
        ok = False
    tunnel_port = optional("tunnel_port", parse_interface_name, "lisp0")
    profile = optional("tunnel_profile", _parse_profile, DEFAULT_PROFILE)
    default_iid = optional("iid", parse_iid, None)
    label = name if name is not None else f"{dpid:016x}" if dpid is not None else field
    router_mac = optional("router_mac", parse_mac, default_router_mac(f"{dpid}/{name}"))
    proxy_arp = optional("proxy_arp", parse_bool, False)
    default_gateway = optional("gateway", parse_gateway, None)
    underlay_mtu = optional("underlay_mtu", _parse_underlay_mtu, DEFAULT_UNDERLAY_MTU)
    too_big_without_df = optional("too_big_without_df", _parse_too_big_without_df, "drop")
    # Endpoint problems are reported but keep the bridge for the
    # cross-bridge checks, so one run shows every problem.
    endpoints: list[Endpoint] = []
    raw_eps = raw.get("endpoint", [])
    if not isinstance(raw_eps, list):
        problems.append(f"{where}: {field}.endpoint: must be an array of tables ([[bridge.endpoint]])")
        raw_eps = []
    ports_seen: set[str] = set()
    for i, raw_ep in enumerate(raw_eps):
        ep_field = f"{field}.endpoint[{i}]"
        try:
            ep = Endpoint.parse(raw_ep, ep_field, default_iid, default_gateway)
        except ModelError as e:
            problem(e)
            continue
        if ep.port in ports_seen:
            problem(ModelError(f"{ep_field}.port", f"port {ep.port!r} already has an endpoint "
                               "on this bridge (one IID per port: list all its EIDs in one endpoint)"))
            continue
        ports_seen.add(ep.port)
        if ep.port == tunnel_port:
            problem(ModelError(f"{ep_field}.port", f"{ep.port!r} is the bridge's tunnel port"))
            continue
        endpoints.append(ep)
    if not ok:
        return None
    return Bridge(label, dpid, name, rloc, tunnel_port, profile, router_mac, tuple(endpoints),
                  proxy_arp, underlay_mtu, too_big_without_df)



def _parse_bridge_peer(value: object, bridge: Bridge, field: str, tls: bool,
                       problems: list[str], where: str) -> TlsPeer | None:
    """The certificate a bridge's switch must present. Checked when the
    switch names its datapath ID, before its bridge name is known: so the
    bridge needs a datapath_id, and OpenFlow needs TLS."""
    try:
        peer = parse_tls_peer(value)
    except ValueError as e:
        problems.append(f"{where}: {field}: {e}")
        return None
    if not tls:
        problems.append(f"{where}: {field}: needs OpenFlow over TLS ([controller] "
                        f"{', '.join(TLS_KEYS)})")
        return None
    if bridge.datapath_id is None:
        problems.append(f"{where}: {field}: needs the bridge's datapath_id (a switch names its "
                        "datapath ID before its bridge name, and the certificate is checked then)")
        return None
    return peer



def _needs_a_bridge(data: dict) -> bool:
    """Whether this config must name a bridge. Today every config must: a
    controller with no bridge would only listen, on every interface, with
    the default store, which is never what an empty or truncated file
    meant. A config whose [lisp] section listens is a Map-Server and
    Map-Resolver, which needs no bridge (docs/control-plane.rst)."""
    lisp = data.get("lisp")
    return not (isinstance(lisp, dict) and "listen" in lisp)



def _check_bridges_unique(bridges: list[Bridge], problems: list[str], where: str) -> None:
    """Bridges are told apart by datapath ID or unique name, and the
    controller is the mapping system for their EIDs: any ambiguity here
    would send traffic to the wrong hypervisor."""
    by_dpid: dict[int, str] = {}
    by_name: dict[str, str] = {}
    by_rloc: dict[object, str] = {}
    by_eid: dict[tuple, str] = {}
    for b in bridges:
        if b.datapath_id is not None:
            if b.datapath_id in by_dpid:
                problems.append(f"{where}: bridge {b.label}: datapath_id {b.datapath_id:016x} "
                                f"is also used by bridge {by_dpid[b.datapath_id]}")
            by_dpid[b.datapath_id] = b.label
        if b.name is not None:
            if b.name in by_name:
                problems.append(f"{where}: bridge {b.label}: name {b.name!r} is used by two "
                                "bridges; identify them by datapath_id instead")
            by_name[b.name] = b.label
        if b.rloc in by_rloc:
            problems.append(f"{where}: bridge {b.label}: rloc {b.rloc} is also the RLOC of "
                            f"bridge {by_rloc[b.rloc]}")
        by_rloc[b.rloc] = b.label
        for ep in b.endpoints:
            for addr in ep.eids:
                key = (ep.iid, addr)
                if key in by_eid:
                    problems.append(f"{where}: bridge {b.label}: endpoint {ep.port}: EID {addr} "
                                    f"in IID {ep.iid} is also on {by_eid[key]}")
                by_eid[key] = f"bridge {b.label} port {ep.port}"
    # The gateway answer outranks every EID in the ARP table: a gateway that
    # is also a VM's address would steal that VM's traffic.
    for b in bridges:
        for ep in b.endpoints:
            if ep.gateway is not None and (ep.iid, ep.gateway) in by_eid:
                problems.append(f"{where}: bridge {b.label}: endpoint {ep.port}: gateway "
                                f"{ep.gateway} in IID {ep.iid} is the EID of "
                                f"{by_eid[(ep.iid, ep.gateway)]}")


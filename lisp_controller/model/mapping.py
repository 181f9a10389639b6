"""The LISP model's composite values (RLOCs, mappings, endpoints, bridges)
and the map-cache, with longest-prefix match per Instance ID.

Pure and in memory: the config, the store and the API build these; the
compiler reads them.
"""
from __future__ import annotations

import ipaddress
import operator
from gc import is_tracked
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

from sortedcontainers import SortedList

from lisp_controller.model.values import (ACTIONS, IID_MAX, PRIORITY_UNUSED, IPAddress, ModelError, Prefix,
                                          _new_tuple, as_prefix, parse_action, parse_gateway, parse_host_address,
                                          parse_iid, parse_int, parse_interface_name, parse_mac, parse_prefix,
                                          parse_rloc_address)
from lisp_controller.model.parted import PrefixParts
from lisp_controller.model.untracked import untrack, untrack_all, untracked_list


class Rloc(NamedTuple):
    # Named tuples, not frozen dataclasses: a bulk request builds 100,000
    # of these, and a frozen dataclass pays object.__setattr__ per field.
    address: IPAddress
    priority: int = 1
    weight: int = 100

    @classmethod
    def parse(cls, value: object, field: str = "rloc") -> "Rloc":
        """From an address string or a {address, priority, weight} table."""
        if isinstance(value, str):
            known = _RLOC_TEXT.get(value)  # a site's mappings share few RLOCs
            if known is None:
                known = cls(parse_rloc_address(value, field))
                if len(_RLOC_TEXT) > 65536:
                    _RLOC_TEXT.clear()
                _RLOC_TEXT[value] = known
            return known
        if not isinstance(value, dict):
            raise ModelError(field, f"must be an address or a table with 'address', got {value!r}")
        unknown = set(value) - {"address", "priority", "weight"}
        if unknown:
            raise ModelError(f"{field}.{sorted(unknown)[0]}", "unknown field")
        if "address" not in value:
            raise ModelError(f"{field}.address", "is required")
        return cls(
            parse_rloc_address(value["address"], f"{field}.address"),
            parse_int(value.get("priority", 1), f"{field}.priority", 0, 255),
            parse_int(value.get("weight", 100), f"{field}.weight", 0, 100),
        )


_RLOC_TEXT: dict[str, Rloc] = {}
_ONE_RLOC: dict[str, tuple[Rloc]] = {}


class Mapping(NamedTuple):
    """(IID, EID prefix) -> RLOC set. No usable RLOC makes it negative, and
    then `action` says what happens to the packets."""

    iid: int
    eid: Prefix
    rlocs: tuple[Rloc, ...] = ()
    ttl: int | None = None  # minutes; None = static
    action: str = "no-action"
    source: str = "config"  # config | endpoint | api
    expires: float | None = None  # clock time when a TTL runs out

    # (iid, eid), made in C: a bulk request asks each mapping several times.
    key = property(operator.itemgetter(0, 1), doc="(iid, eid): what a mapping is known by")

    def rloc_shares(self) -> tuple[tuple[IPAddress, int], ...]:
        """Where traffic goes (RFC 9300 section 12, and the Map-Reply's
        Locator fields in RFC 9301): the usable RLOCs (priority 255 never
        is) of the lowest priority value, each with its relative weight.
        Weights are shares of the traffic: an RLOC of weight 0 gets none
        while another of its priority has some, and if all are 0 they share
        equally (weight 1 each). Sorted by address, so the same set in any
        order is one set (one OpenFlow group). Empty: a negative entry."""
        rlocs = self.rlocs
        if len(rlocs) == 1:  # the common case
            only = rlocs[0]
            return ((only.address, only.weight or 1),) if only.priority != PRIORITY_UNUSED else ()
        usable = [r for r in rlocs if r.priority != PRIORITY_UNUSED]
        if not usable:
            return ()
        best = min(r.priority for r in usable)
        chosen = [r for r in usable if r.priority == best]
        if any(r.weight for r in chosen):
            chosen = [r for r in chosen if r.weight]
        return tuple(sorted(((r.address, r.weight or 1) for r in chosen),
                            key=lambda share: (share[0].version, int(share[0]))))

    @classmethod
    def parse(cls, value: object, field: str = "mapping", source: str = "config") -> "Mapping":
        if not isinstance(value, dict):
            raise ModelError(field, f"must be a table, got {value!r}")
        if not value.keys() <= _MAPPING_KEYS:
            raise ModelError(f"{field}.{sorted(set(value) - _MAPPING_KEYS)[0]}", "unknown field")
        if "iid" not in value or "eid" not in value:
            raise ModelError(f"{field}.{'iid' if 'iid' not in value else 'eid'}", "is required")
        # A bulk request parses 100,000 of these: field names are made only
        # for an error, and the common case (one RLOC address) is a lookup.
        rlocs_raw = value.get("rlocs", _NO_RLOCS)
        if not isinstance(rlocs_raw, list):
            raise ModelError(f"{field}.rlocs", "must be a list")
        if len(rlocs_raw) == 1 and isinstance(rlocs_raw[0], str):
            rlocs = _ONE_RLOC.get(rlocs_raw[0])  # the common case, one shared tuple
            if rlocs is None:
                rlocs = (Rloc.parse(rlocs_raw[0], f"{field}.rlocs[0]"),)
                if len(_ONE_RLOC) > 65536:
                    _ONE_RLOC.clear()
                _ONE_RLOC[rlocs_raw[0]] = rlocs
        else:
            rlocs = tuple(Rloc.parse(r, f"{field}.rlocs[{i}]") for i, r in enumerate(rlocs_raw))
        if len(rlocs) > 1:
            seen = set()
            for i, r in enumerate(rlocs):
                if r.address in seen:
                    raise ModelError(f"{field}.rlocs[{i}].address", f"{r.address} is listed twice")
                seen.add(r.address)
        ttl = value.get("ttl")
        if ttl is not None:
            ttl = parse_int(ttl, f"{field}.ttl", 1, 2**32 - 1)
        iid = value["iid"]
        if type(iid) is not int or not 0 <= iid <= IID_MAX:
            iid = parse_iid(iid, f"{field}.iid")  # bools, other types, out of range
        try:
            eid = parse_prefix(value["eid"])
        except ModelError as e:
            raise ModelError(f"{field}.eid", e.problem) from None
        action = value.get("action", "no-action")
        if action not in ACTIONS:
            action = parse_action(action, f"{field}.action")
        # tuple.__new__ directly: the named tuple's own __new__ is Python code.
        mapping = _new_tuple(cls, (iid, eid, rlocs, ttl, action, source, None))
        untrack(mapping)  # a bulk's mappings never reach the collector's old generation (model/untracked.py)
        untrack(eid)
        return mapping


_NO_RLOCS: list = []
_MAPPING_KEYS = frozenset({"iid", "eid", "rlocs", "ttl", "action"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A VM interface in the local EID database of one bridge."""

    port: str
    mac: str
    iid: int
    eids: tuple[IPAddress, ...]
    # The VM's default router address (scenario 3): the bridge answers ARP
    # for it with its router MAC and routes the VM's packets (TTL - 1).
    gateway: ipaddress.IPv4Address | None = None

    @classmethod
    def parse(cls, value: object, field: str, default_iid: int | None,
              default_gateway: ipaddress.IPv4Address | None = None) -> "Endpoint":
        if not isinstance(value, dict):
            raise ModelError(field, f"must be a table, got {value!r}")
        unknown = set(value) - {"port", "mac", "iid", "eids", "gateway"}
        if unknown:
            raise ModelError(f"{field}.{sorted(unknown)[0]}", "unknown field")
        for required in ("port", "mac", "eids"):
            if required not in value:
                raise ModelError(f"{field}.{required}", "is required")
        port = parse_interface_name(value["port"], f"{field}.port")
        if "iid" in value:
            iid = parse_iid(value["iid"], f"{field}.iid")
        elif default_iid is not None:
            iid = default_iid
        else:
            raise ModelError(f"{field}.iid", "is required (or set iid on the bridge)")
        eids_raw = value["eids"]
        if not isinstance(eids_raw, list) or not eids_raw:
            raise ModelError(f"{field}.eids", "must be a non-empty list of addresses")
        eids = tuple(parse_host_address(a, f"{field}.eids[{i}]") for i, a in enumerate(eids_raw))
        gateway = default_gateway
        if "gateway" in value:
            gateway = parse_gateway(value["gateway"], f"{field}.gateway")
        if gateway is not None and gateway in eids:
            raise ModelError(f"{field}.gateway", f"{gateway} is also one of the endpoint's EIDs")
        return cls(port, parse_mac(value["mac"], f"{field}.mac"), iid, eids, gateway)

    def check(self, field: str = "endpoint") -> None:
        """ModelError if this endpoint breaks a rule `parse` has: for values
        made elsewhere, such as a store written by an earlier version that
        accepted more."""
        Endpoint.parse({"port": self.port, "mac": self.mac, "iid": self.iid,
                        "eids": [str(a) for a in self.eids],
                        **({} if self.gateway is None else {"gateway": str(self.gateway)})}, field, None)


def prefix_key(iid: int, eid: Prefix) -> tuple[int, int, int, int]:
    """A dict key for (IID, prefix) made of ints: (iid, version, network
    address as an int, prefix length). An ipaddress network is taken too."""
    return (iid,) + (eid if type(eid) is Prefix else as_prefix(eid))


_NETWORK_BITS = 128
_NETWORK_MASK = (1 << _NETWORK_BITS) - 1


def order_key(iid: int, version: int, network: int, length: int) -> int:
    """A `prefix_key` packed into one int that sorts the same way: IID,
    then IPv4 before IPv6, then network address, then prefix length. One
    int costs about 50 bytes in the map-cache's order index and compares in
    one step (a tuple of four costs 80 and compares item by item)."""
    return ((((iid << 1) | (version == 6)) << _NETWORK_BITS | network) << 8) | length


def from_order_key(key: int) -> tuple[int, int, int, int]:
    """The `prefix_key` an `order_key` was made from."""
    return key >> 137, 6 if key >> 136 & 1 else 4, key >> 8 & _NETWORK_MASK, key & 0xFF


# Prefixes of one length in one dict at most; a bucket that grows past
# this is kept in parts from then on (model/parted.py): a dict of a million
# doubled its table in one step of 55 to 95 ms during a bulk
# (docs/performance.rst, "Single steps at a million").
PARTED_AT = 32_768
SNAPSHOT_PARTS = 16  # parts of a bucket `MapCache.snapshot` takes between pauses (64,000 mappings of a million)


class MapCache:
    """Mappings by (IID, prefix) with longest-prefix-match lookup per IID,
    and in (IID, prefix) order.

    Prefixes are bucketed by (IID, version, length); a lookup tries the
    lengths present, longest first, so it costs at most 33 (or 129) dict
    probes however many mappings there are; a bucket of more than
    `PARTED_AT` prefixes is kept in parts (`PrefixParts`). Iteration goes
    bucket by bucket. The order index (`ordered`) keeps every key as an `order_key`
    in a sorted list, kept as mappings come and go (under a microsecond
    each, in order, about 2 at random), so a page of the map-cache in
    order costs O(log n + page), never a sort of the whole
    (docs/performance.rst, "A free hub")."""

    def __init__(self, mappings: Iterable[Mapping] = ()):
        # (iid, version) -> {prefixlen: {network int: Mapping}}
        self._buckets: dict[tuple[int, int], dict[int, dict[int, Mapping] | PrefixParts]] = {}
        self._count = 0
        self._sources: dict[str, int] = {}  # mappings by source, kept as they come and go
        self._order = SortedList()  # order_key of every mapping
        self._watchers: list = []  # told of every mapping that comes, is replaced or goes (see watch)
        for m in mappings:
            self.add(m)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Mapping]:
        for lengths in self._buckets.values():
            for bucket in lengths.values():
                yield from bucket.values()

    def __contains__(self, key: tuple[int, Prefix]) -> bool:
        return self.get(*key) is not None

    def watch(self, watcher) -> None:
        """Call ``watcher.add(key, mapping)`` for every mapping held now and
        each prefix added later, ``watcher.replace(key, mapping)`` for each
        mapping put in place of another, ``watcher.discard(key)`` for each
        prefix removed (keys are ``prefix_key`` tuples), as each change is
        made. The Map-Resolver keeps its prefixes in address order this way
        (lisp/negative.py), and the control listener's thread its copy of
        the map-cache (lisp/mirror.py); without a watcher the map-cache pays
        nothing."""
        self._watchers.append(watcher)
        for (iid, version), lengths in self._buckets.items():
            for length, bucket in lengths.items():
                for network, mapping in bucket.items():
                    watcher.add((iid, version, network, length), mapping)

    def get(self, iid: int, eid: Prefix) -> Mapping | None:
        _, version, network, length = prefix_key(iid, eid)
        lengths = self._buckets.get((iid, version))
        bucket = lengths.get(length) if lengths is not None else None
        return bucket.get(network) if bucket is not None else None

    def add(self, mapping: Mapping, key: tuple | None = None) -> Mapping | None:
        """Insert or replace the mapping for its (IID, prefix); `key` is its
        prefix_key if the caller has it already. Returns the one replaced."""
        iid, version, network, length = key or prefix_key(mapping.iid, mapping.eid)
        lengths = self._buckets.get((iid, version))
        if lengths is None:
            lengths = self._buckets[(iid, version)] = {}
        bucket = lengths.get(length)
        if bucket is None:
            bucket = lengths[length] = {}
        elif type(bucket) is dict and len(bucket) >= PARTED_AT:
            bucket = lengths[length] = PrefixParts(bucket.items())  # one step of PARTED_AT entries
        held = bucket if type(bucket) is dict else bucket.parts[network % PrefixParts.PARTS]
        old = held.get(network)
        held[network] = mapping
        if is_tracked(mapping):  # acyclic: nothing for the collector to walk (model/untracked.py)
            untrack(mapping)
            untrack(mapping.eid)
        sources = self._sources
        sources[mapping.source] = sources.get(mapping.source, 0) + 1
        if old is not None:
            self._forget_source(old.source)
            for watcher in self._watchers:
                watcher.replace((iid, version, network, length), mapping)
        else:
            self._count += 1
            self._order.add(order_key(iid, version, network, length))
            for watcher in self._watchers:
                watcher.add((iid, version, network, length), mapping)
        return old

    def remove(self, iid: int, eid: Prefix, key: tuple | None = None) -> Mapping | None:
        _, version, network, length = key or prefix_key(iid, eid)
        lengths = self._buckets.get((iid, version))
        bucket = lengths.get(length) if lengths is not None else None
        mapping = bucket.pop(network, None) if bucket is not None else None
        if mapping is not None:
            self._count -= 1
            self._forget_source(mapping.source)
            self._order.remove(order_key(iid, version, network, length))
            if not bucket:
                del lengths[length]
            for watcher in self._watchers:
                watcher.discard((iid, version, network, length))
        return mapping

    def sources(self) -> dict[str, int]:
        """How many mappings each source has (config, endpoint, api, ...):
        kept as mappings come and go, so nobody counts a million to know."""
        return dict(self._sources)

    def _forget_source(self, source: str) -> None:
        left = self._sources[source] - 1
        if left:
            self._sources[source] = left
        else:
            del self._sources[source]

    def untrack(self) -> None:
        """Hide the map-cache's containers of a million items from the
        collector again (model/untracked.py): its buckets, which CPython
        tracks again when a mapping is put in, and its order index's lists
        of ints (the sorted list makes a new one when one grows long).
        Cheap: a few dozen buckets, one list per thousand mappings."""
        untrack_all(part for lengths in self._buckets.values() for bucket in lengths.values()
                    for part in (bucket.parts if isinstance(bucket, PrefixParts) else (bucket,)))
        untrack_all(self._order._lists)  # sortedcontainers' sublists: ints only

    def snapshot(self, pause: Callable[[], None] | None = None) -> list[Mapping]:
        """Every mapping, in no order: a list made in C, so a caller can go
        through it while yielding to the hub and the map-cache changes
        meanwhile. A bucket in parts is taken a part at a time, `pause`
        letting the hub go every SNAPSHOT_PARTS parts (a million in one
        step took 70 to 190 ms): a prefix always lives in the same part,
        so a change meanwhile shows each prefix once, before or after it.
        The collector never walks the list (model/untracked.py)."""
        out: list[Mapping] = untracked_list()
        taken = 0
        for lengths in list(self._buckets.values()):  # a bucket may come or go at a pause
            for bucket in list(lengths.values()):
                if type(bucket) is not PrefixParts:
                    out.extend(bucket.values())
                    continue
                for part in bucket.parts:
                    out.extend(part.values())
                    taken += 1
                    if pause is not None and taken % SNAPSHOT_PARTS == 0:
                        pause()
        return out

    def count_between(self, low: int, high: int) -> int:
        """How many mappings have an `order_key` in [low, high)."""
        order = self._order
        return order.bisect_left(high) - order.bisect_left(low)

    def ordered(self, low: int, high: int, start: int, stop: int, reverse: bool = False) -> list[Mapping]:
        """The mappings with an `order_key` in [low, high), in order (or
        reversed), from position `start` to `stop` of that range:
        O(log n + stop - start)."""
        order = self._order
        first, end = order.bisect_left(low), order.bisect_left(high)
        if reverse:
            keys = order.islice(max(first, end - stop), max(first, end - start), reverse=True)
        else:
            keys = order.islice(min(end, first + start), min(end, first + stop))
        out = []
        for key in keys:
            iid, version, network, length = from_order_key(key)
            out.append(self._buckets[(iid, version)][length][network])
        return out

    def lookup(self, iid: int, address: IPAddress | str) -> Mapping | None:
        """The mapping that serves `address` in `iid`: longest prefix wins."""
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        lengths = self._buckets.get((iid, address.version))
        if not lengths:
            return None
        bits = address.max_prefixlen
        value = int(address)
        for length in sorted(lengths, reverse=True):
            mask = ((1 << length) - 1) << (bits - length) if length else 0
            hit = lengths[length].get(value & mask)
            if hit is not None:
                return hit
        return None


@dataclass(frozen=True)
class Bridge:
    """One managed OVS bridge as the config describes it."""

    label: str  # what logs and the API call it
    datapath_id: int | None
    name: str | None
    rloc: IPAddress
    tunnel_port: str
    profile: str
    router_mac: str
    endpoints: tuple[Endpoint, ...] = ()
    # Answer the VMs' ARP requests in flows (scenario 2: VMs share a subnet
    # across a routed underlay, so ARP cannot reach the other VM).
    proxy_arp: bool = False
    # The MTU of the underlay this bridge's tunnel packets cross, and what
    # happens to an IPv4 packet too big for the tunnel that may be
    # fragmented (no DF bit): "drop" or "fragment" (docs/mtu.rst).
    underlay_mtu: int = 1500
    too_big_without_df: str = "drop"

    def matches(self, datapath_id: int, bridge_name: str | None) -> bool:
        if self.datapath_id is not None:
            return self.datapath_id == datapath_id
        return self.name is not None and self.name == bridge_name

    def answers_to(self, ref: str) -> bool:
        """What users call a bridge: its label, its name or its datapath ID."""
        return refers_to(ref, self.label, self.name, self.datapath_id)


def refers_to(ref: str, label: str, name: str | None, datapath_id: int | None) -> bool:
    """Whether `ref`, as a user wrote it, names the bridge with this label,
    name and datapath ID. Names are not unique (the hypervisors of the blog
    all call theirs br2): whoever looks a bridge up must check that only one
    answers, and otherwise ask for the datapath ID."""
    return ref in (label, name) or (datapath_id is not None and datapath_id_of(ref) == datapath_id)


def datapath_id_of(text: str) -> int | None:
    """A datapath ID as ovs-ofctl shows it (hex; 0x and colons allowed), or
    None if `text` is not one."""
    digits = text.lower().replace(":", "").removeprefix("0x")
    if not digits:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class Overlay:
    """Everything the compiler needs: bridges, static mappings, miss action."""

    bridges: tuple[Bridge, ...]
    mappings: tuple[Mapping, ...] = ()
    miss_action: str = "drop"

    def map_cache(self) -> MapCache:
        """The map-cache every bridge sees: configured mappings, plus one host
        mapping per endpoint address pointing at the RLOC of its bridge (the
        controller is the mapping system of its own bridges). A configured
        mapping for the same host prefix wins: the operator said so."""
        cache = MapCache()
        for bridge in self.bridges:
            for ep in bridge.endpoints:
                for m in endpoint_mappings(bridge, ep):
                    cache.add(m)
        for m in self.mappings:
            cache.add(m)
        return cache


def endpoint_mappings(bridge: Bridge, ep: Endpoint) -> list[Mapping]:
    """The host mappings an endpoint contributes to every other bridge."""
    return [Mapping(ep.iid, as_prefix(a), (Rloc(bridge.rloc),), source="endpoint") for a in ep.eids]

"""The ITR side: a map-cache miss asked of the map-resolvers (RFC 9301
sections 5.2 to 5.4 and 6.1), and the answer turned into learned mappings.

Pure and clock-driven, like the registrar: `miss` takes a packet the
map-cache missed, `poll` runs the retries, `on_reply` takes a Map-Reply and
says what to learn and which held packets to send on. Nothing here owns a
socket or a switch (docs/control-plane.rst, "Resolution").

Rules:

* one request per destination EID (IID and host prefix) at a time, so at
  most one Map-Request a second for it (RFC 9301 section 5.3); further
  misses for it only hold their packets (a few, for the packet-out);
* the request is an ECM towards a map-resolver, the inner header from the
  packet's source to its destination, the source EID that of the packet,
  our control address the ITR-RLOC, a fresh nonce per send;
* no answer: sent again after 1, 2 and 4 seconds, each time to the next
  map-resolver; a resolver that let a request time out is no longer the
  first one asked (fail-over), one that answered becomes it;
* a Map-Reply is taken only if its nonce is one we sent and still wait on;
  records must be of the asked IID and cover the asked EID; anything else
  is dropped and counted, never installed.
"""
from __future__ import annotations

import heapq
import ipaddress
import os
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from lisp_controller.lisp.addresses import EncapsulationFormatAddress, InstanceIdAddress
from lisp_controller.lisp.config import XtrSettings
from lisp_controller.lisp.headers import UDP, internet_checksum, udp_checksum
from lisp_controller.lisp.messages import LISP_CONTROL_PORT, MapReply, MapRequest, encode, wrap_in_ecm
from lisp_controller.lisp.records import Action, EidRecord, MapRequestRecord
from lisp_controller.lisp.registrar import Datagram
from lisp_controller.model import IPAddress, Mapping, Prefix, Rloc, as_prefix
from lisp_controller.model.untracked import untrack

RETRY_WAITS = (1.0, 2.0, 4.0)  # seconds after a send before the next one
GIVE_UP_AFTER = 4.0  # seconds after the last send
MAX_HELD = 8  # packets held per request for the packet-out
MAX_HELD_TOTAL = 8192  # packets held at once (about 12 MB of frames at most); beyond, they are dropped
MAX_PENDING = 65536  # requests waiting at once; beyond, misses are dropped (and counted)
MAX_SOURCES = 65536  # distinct packet sources and RLOC sets kept shared; beyond, sharing starts again
PRIORITY_UNUSED = 255

# RFC 9301 ACT values -> what the map-cache does (model.ACTIONS)
_ACTIONS = {Action.NO_ACTION: "no-action", Action.NATIVELY_FORWARD: "native-forward",
            Action.SEND_MAP_REQUEST: "send-map-request", Action.DROP_NO_REASON: "drop",
            Action.DROP_POLICY_DENIED: "drop", Action.DROP_AUTHENTICATION_FAILURE: "drop"}

Key = tuple  # (iid, Prefix)


class Held(NamedTuple):
    """A packet that missed, kept until its mapping's flow is confirmed."""

    datapath_id: int
    in_port: int
    data: bytes


@dataclass
class _Request:
    iid: int
    eid: Prefix  # the destination host prefix asked about
    source: IPAddress  # the packet's source EID (the inner header's source)
    attempt: int = 0  # sends so far
    resolver: int = 0  # index of the map-resolver of the last send
    deadline: float = 0.0
    nonces: list[bytes] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


class Resolution(NamedTuple):
    """What a Map-Reply taught: mappings to learn, packets to send on
    once their flows are confirmed (none for a negative entry whose action
    would bring them straight back)."""

    key: Key
    mappings: list[Mapping]
    held: list[Held]


class _Learned(NamedTuple):
    """What the refresh needs of a learned prefix. Numbers and a shared
    address, out of the collector's sight (model/untracked.py): a hundred
    thousand learned prefixes add nothing to a full collection, which
    holds the hub (docs/performance.rst, "A free hub")."""

    source: IPAddress  # a packet source seen for it: the inner source of a refresh (one object per source)
    expires: float
    lead: float  # seconds: see Resolver.refresh_due
    baseline: int | None = None  # packets counted when the refresh window opened


def _untracked(learned: _Learned) -> _Learned:
    untrack(learned)
    return learned


class Resolver:
    def __init__(self, settings: XtrSettings, clock: Callable[[], float] = time.time,
                 nonce: Callable[[int], bytes] = os.urandom, ttl_clock: Callable[[], float] | None = None,
                 port: int = LISP_CONTROL_PORT):
        """`clock` times the retries; `ttl_clock` (default: `clock`) is
        the state's clock, which learned TTLs run on. `port` is the UDP port
        we receive on: the inner source port of our Map-Requests, which the
        Map-Reply is sent back to."""
        self.settings = settings
        self.clock = clock
        self.ttl_clock = ttl_clock or clock
        self.port = port
        self._nonce = nonce
        self.preferred = 0  # index of the map-resolver asked first
        self._requests: dict[Key, _Request] = {}
        self._by_nonce: dict[bytes, Key] = {}
        self._learned: dict[Key, _Learned] = {}
        # When each learned prefix next needs a look (its refresh window
        # opens, its decision falls): (time, key, expires), a heap, so a
        # look costs the prefixes due, not all of them. An entry whose
        # prefix was answered again since (another `expires`) is stale.
        self._looks: list[tuple[float, Key, float]] = []
        self._sources: dict[IPAddress, IPAddress] = {}  # one object per packet source (see _Learned)
        self._held = 0  # packets held by all requests
        self.counts: dict[str, int] = {}

    # -- misses -------------------------------------------------------------
    def miss(self, iid: int, source: IPAddress, destination: IPAddress, held: Held | None = None) -> list[Datagram]:
        """A packet from `source` to `destination` in `iid` missed the
        map-cache. Returns the Map-Request to send, or nothing if one for
        this EID is already under way (the packet is held with it)."""
        self._count("misses")
        key = (iid, as_prefix(destination))
        request = self._requests.get(key)
        if request is not None:
            self._hold(request, held)
            self._count("misses_joined")
            return []
        if len(self._requests) >= MAX_PENDING or source.version != destination.version:
            self._count("misses_dropped")
            return []
        request = self._requests[key] = _Request(iid, key[1], source, resolver=self.preferred)
        self._hold(request, held)
        return [self._send(key, request)]

    def refresh(self, key: Key) -> list[Datagram]:
        """Ask again about a learned prefix that still carries traffic."""
        learned = self._learned.get(key)
        if learned is None or key in self._requests:
            return []
        iid, prefix = key
        request = self._requests[key] = _Request(iid, prefix, learned.source, resolver=self.preferred)
        self._count("refreshes")
        return [self._send(key, request)]

    def poll(self) -> tuple[list[Datagram], list[Key]]:
        """Retries due now, and the requests given up (their held packets
        are dropped)."""
        now = self.clock()
        out, failed = [], []
        for key, request in list(self._requests.items()):
            if request.deadline > now:
                continue
            if request.resolver == self.preferred and len(self.settings.map_resolvers) > 1:
                self.preferred = (self.preferred + 1) % len(self.settings.map_resolvers)
                self._count("failovers")
            if request.attempt > len(RETRY_WAITS):
                self._drop(key)
                failed.append(key)
                self._count("requests_failed")
                continue
            request.resolver = (request.resolver + 1) % len(self.settings.map_resolvers)
            out.append(self._send(key, request))
            self._count("retries")
        return out, failed

    def next_due(self) -> float:
        return min((r.deadline for r in self._requests.values()), default=float("inf"))

    def pending(self) -> int:
        return len(self._requests)

    # -- replies ------------------------------------------------------------
    def on_reply(self, reply: MapReply) -> Resolution | str:
        """The mappings a Map-Reply answers our request with, or why it was
        dropped (counted): unknown-nonce (not ours, already answered, or
        forged), bad-record (no usable record for what we asked)."""
        key = self._by_nonce.get(reply.nonce)
        if key is None:
            return self._count("replies_unknown_nonce", "unknown-nonce")
        request = self._requests[key]
        now = self.ttl_clock()
        mappings = [m for m in (_mapping(r, request) for r in reply.records) if m is not None]
        if not mappings:
            return self._count("replies_bad_record", "bad-record")
        index = request.nonces.index(reply.nonce)
        self.preferred = (request.resolver - (len(request.nonces) - 1 - index)) % len(self.settings.map_resolvers)
        self._drop(key)
        source = self._sources.setdefault(request.source, request.source)
        if len(self._sources) > MAX_SOURCES:
            self._sources.clear()
        for m in mappings:
            learned = _Learned(source, now + 60.0 * m.ttl, min(60.0, max(2.0, 6.0 * m.ttl)))
            mkey = m.key
            self._learned[mkey] = _untracked(learned)
            self._look(learned.expires - 2 * learned.lead, mkey, learned.expires)
        self._count("replies_negative" if not mappings[0].rlocs else "replies_accepted")
        forward = any(bool(m.rloc_shares()) or m.action != "send-map-request" for m in mappings)
        return Resolution(key, mappings, request.held if forward else [])

    # -- keeping what is used --------------------------------------------------
    def refresh_due(self, packets: Callable[[Key], int | None]) -> list[Datagram]:
        """Learned prefixes near their TTL: ask again about those whose
        flow carried packets since the refresh window opened; leave the
        idle ones to expire. `packets(key)` is the flow's packet counter
        now, or None if unknown (an entry whose counter was never known is
        left to expire). The window opens two leads before expiry
        and the decision falls one lead before (a lead is a tenth of the
        TTL, from 2 to 60 seconds)."""
        now = self.ttl_clock()
        out, later = [], []
        looks = self._looks
        while looks and looks[0][0] <= now:
            _, key, expires = heapq.heappop(looks)
            learned = self._learned.get(key)
            if learned is None or learned.expires != expires:
                continue  # gone, or answered again since: its own look is in the heap
            if expires <= now:
                del self._learned[key]
            elif learned.baseline is None:
                baseline = packets(key)  # None (not read yet): asked again next time
                if baseline is not None:
                    self._learned[key] = learned = _untracked(learned._replace(baseline=baseline))
                later.append((now if baseline is None else expires - learned.lead, key, expires))
            else:
                count = packets(key)
                if count is not None and count > learned.baseline:
                    out += self.refresh(key)
                del self._learned[key]  # tracked again when the answer comes
        for look in later:
            self._look(*look)
        if len(looks) > 2 * len(self._learned) + 1024:  # mostly stale: start again from the entries
            self._looks = []
            for k, l in self._learned.items():
                self._look(l.expires - (l.lead if l.baseline is not None else 2 * l.lead), k, l.expires)
        return out

    def _look(self, when: float, key: Key, expires: float) -> None:
        """Look at learned prefix `key` again at `when`. The key and the
        entry are tuples of numbers and a Prefix, untracked like the
        prefix itself (a tuple holding a tuple subclass stays tracked for
        good otherwise: model/untracked.py)."""
        untrack(key)
        look = (when, key, expires)
        untrack(look)
        heapq.heappush(self._looks, look)

    # -- internals ---------------------------------------------------------------
    def _send(self, key: Key, request: _Request) -> Datagram:
        nonce = self._nonce(8)
        request.nonces.append(nonce)
        self._by_nonce[nonce] = key
        wait = RETRY_WAITS[request.attempt] if request.attempt < len(RETRY_WAITS) else GIVE_UP_AFTER
        request.attempt += 1
        request.deadline = self.clock() + wait
        resolver = self.settings.map_resolvers[request.resolver]
        self._count("requests_sent")
        return Datagram(resolver, LISP_CONTROL_PORT, map_request(
            nonce, request.iid, request.eid, request.source, self.settings.control_address, self.port))

    def _hold(self, request: _Request, held: Held | None) -> None:
        if held is None:
            return
        if len(request.held) >= MAX_HELD or self._held >= MAX_HELD_TOTAL:
            self._count("packets_not_held")
            return
        request.held.append(held)
        self._held += 1

    def _drop(self, key: Key) -> None:
        request = self._requests.pop(key)
        self._held -= len(request.held)
        for nonce in request.nonces:
            self._by_nonce.pop(nonce, None)

    def _count(self, name: str, result: str = "") -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return result


def map_request(nonce: bytes, iid: int, eid: Prefix, source: IPAddress, itr_rloc: IPAddress,
                port: int = LISP_CONTROL_PORT) -> bytes:
    """The ECM-encapsulated Map-Request for `eid` in `iid` (RFC 9301
    sections 5.2 and 5.8): inner header from the packet's source to the
    EID asked about, source EID and record in the IID's LCAF.

    The codec makes it (`encoded_map_request`) once per shape: requests of
    one IID, source, ITR-RLOC, port and prefix length differ only in the
    nonce, the EID's address (at the end, and as the inner destination)
    and the inner checksums, which are filled in here: a sixth of the
    codec's time, paid for every miss (a test holds the two equal)."""
    shape = (iid, eid.version, eid.prefixlen, source, itr_rloc, port)
    template = _REQUESTS.get(shape)
    if template is None:
        if len(_REQUESTS) > MAX_SOURCES:
            _REQUESTS.clear()
        template = _REQUESTS[shape] = _request_template(iid, eid, source, itr_rloc, port)
    if template is _NO_TEMPLATE:
        return encoded_map_request(nonce, iid, eid, source, itr_rloc, port)
    head, width, at, udp, pseudo = template
    address = eid[1].to_bytes(width, "big")  # the prefix's network address
    data = bytearray(head)
    data[at:at + 8] = nonce
    data[-width:] = address
    if width == 4:
        data[_IP + 16:_IP + 20] = address
        data[_IP + 10:_IP + 12] = internet_checksum(bytes(data[_IP:_IP + 20])).to_bytes(2, "big")
    else:
        data[_IP + 24:_IP + 40] = address
    segment = bytes(data[udp:])
    pseudo = pseudo[0] + address + pseudo[1]  # source, destination, then protocol and length
    data[udp + 6:udp + 8] = (internet_checksum(pseudo + segment) or 0xFFFF).to_bytes(2, "big")
    return bytes(data)


def encoded_map_request(nonce: bytes, iid: int, eid: Prefix, source: IPAddress, itr_rloc: IPAddress,
                        port: int = LISP_CONTROL_PORT) -> bytes:
    """`map_request`, made by the codec."""
    request = MapRequest(nonce, (MapRequestRecord(InstanceIdAddress(iid, eid.network_address), eid.prefixlen),),
                         (itr_rloc,), InstanceIdAddress(iid, source))
    return encode(wrap_in_ecm(request, source, eid.network_address, inner_source_port=port))


_REQUESTS: dict[tuple, object] = {}  # shape -> (bytes to fill in, EID width, where the nonce goes)
_NO_TEMPLATE = object()  # a shape whose bytes are not laid out as `map_request` expects
_IP = 4  # the inner IP header, after the ECM's


def _request_template(iid: int, eid: Prefix, source: IPAddress, itr_rloc: IPAddress, port: int) -> object:
    """The codec's request of this shape, once it is checked that the nonce
    and the EID's address sit where `map_request` writes them (the nonce
    after the inner headers and the request's first word, the EID last and
    as the inner destination); else _NO_TEMPLATE."""
    width = 4 if eid.version == 4 else 16
    bits = 8 * width
    probe = Prefix(eid.version, ((1 << eid.prefixlen) - 1) << (bits - eid.prefixlen), eid.prefixlen)
    nonce = bytes(range(1, 9))
    data = encoded_map_request(nonce, iid, probe, source, itr_rloc, port)
    address = probe.network_address.packed
    at = _IP + (20 if width == 4 else 40) + 8 + 4
    destination = _IP + (16 if width == 4 else 24)
    if data[at:at + 8] != nonce or not data.endswith(address) or data[destination:destination + width] != address:
        return _NO_TEMPLATE
    head = bytearray(data)
    udp = _IP + (20 if width == 4 else 40)
    head[udp + 6:udp + 8] = bytes(2)  # the checksums are computed over their field zeroed
    if width == 4:
        head[_IP + 10:_IP + 12] = bytes(2)
    # The UDP pseudo-header around the destination (headers.udp_checksum's).
    length = len(data) - udp
    pseudo = (source.packed, bytes((0, UDP)) + length.to_bytes(2, "big")) if width == 4 else \
        (source.packed, length.to_bytes(4, "big") + bytes((0, 0, 0, UDP)))
    if udp_checksum(source, probe.network_address, bytes(head[udp:])) != \
            (internet_checksum(pseudo[0] + address + pseudo[1] + bytes(head[udp:])) or 0xFFFF):
        return _NO_TEMPLATE
    return bytes(head), width, at, udp, pseudo


def _ip(address: object) -> IPAddress | None:
    if isinstance(address, EncapsulationFormatAddress):
        address = address.address
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return address
    return None


def _mapping(record: EidRecord, request: _Request) -> Mapping | None:
    """The record as a learned mapping if it answers `request`: the same
    IID, an IP prefix covering the asked EID, a known action; else None."""
    eid = record.eid
    if not isinstance(eid, InstanceIdAddress) or eid.instance_id != request.iid:
        return None
    address = eid.address
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or \
            address.version != request.eid.version or record.mask_len > address.max_prefixlen:
        return None
    try:
        prefix = Prefix(address.version, int(address), record.mask_len)
    except ValueError:  # host bits set
        return None
    if not request.eid.subnet_of(prefix) or record.action not in _ACTIONS or record.ttl == 0:
        return None
    rlocs, seen = [], set()
    for loc in record.locators:
        rloc = _ip(loc.address)
        if rloc is None or rloc in seen:
            continue
        seen.add(rloc)
        rlocs.append(Rloc(rloc, loc.priority if loc.reachable else PRIORITY_UNUSED, loc.weight))
    if record.locators and not rlocs:
        return None
    return Mapping(request.iid, prefix, _shared_rlocs(tuple(rlocs)), ttl=record.ttl, action=_ACTIONS[record.action],
                   source="map-resolver")


_RLOC_SETS: dict[tuple[Rloc, ...], tuple[Rloc, ...]] = {}


def _shared_rlocs(rlocs: tuple[Rloc, ...]) -> tuple[Rloc, ...]:
    """One tuple per distinct RLOC set, as the config and the API share
    theirs (model/mapping.py): the learned prefixes of a site share a few
    RLOCs, and each copy would be three objects for the collector to walk."""
    shared = _RLOC_SETS.get(rlocs)
    if shared is None:
        if len(_RLOC_SETS) > MAX_SOURCES:
            _RLOC_SETS.clear()
        shared = _RLOC_SETS[rlocs] = rlocs
    return shared

"""The Map-Server and the Map-Resolver as pure logic (RFC 9301 section 8):
decoded messages in, messages to send and model values out. No sockets; time
comes from an injected clock (docs/control-plane.rst).

* ``MapServer.register`` checks a Map-Register against the configured sites
  (which site, which key, HMAC, allowed prefixes, the site's cap) and turns
  it into registrations: soft state that times out unless refreshed, handed
  to the controller as learned mappings (source ``registered:<site>``), and
  the Map-Notify to send back if the ETR asked for one. Anything wrong
  raises ``Refused`` with one reason and changes nothing.
* ``MapResolver.resolve`` answers an Encapsulated Map-Request from the
  controller's map-cache (its own bridges' endpoints, config, API and
  registered mappings): a Map-Reply, a negative Map-Reply for a hole, or the
  request forwarded to the registering ETR of a site that did not ask for
  proxy replies.
"""
from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from lisp_controller.lisp.addresses import EncapsulationFormatAddress, InstanceIdAddress, eid_address_bytes
from lisp_controller.lisp.auth import sign, verify
from lisp_controller.lisp.common_request import Query, ip_eid
from lisp_controller.lisp.config import LispSettings, Site, SitePrefix
from lisp_controller.lisp.messages import (LISP_CONTROL_PORT, EncapsulatedControlMessage, MapNotify, MapRegister,
                                          encode, encode_map_reply)
from lisp_controller.lisp.negative import PrefixOrder
from lisp_controller.lisp.records import Action, EidRecord, LocatorRecord, eid_record_bytes, encode_locator
from lisp_controller.model import IID_MAX, PRIORITY_UNUSED, MapCache, Mapping, Prefix, Rloc
from lisp_controller.model.untracked import untrack

# RFC 9301 section 8.2: ETRs register every minute and a Map-Server drops a
# registration not refreshed for three; lispers.net instead says "time me
# out by the record TTL" with bit 0x0800 (``use_ttl_for_timeout``).
DEFAULT_REGISTRATION_MINUTES = 3
DEFAULT_REPLY_TTL = 1440          # minutes an ITR may cache a Map-Reply (RFC 9301 section 5.4's default)
UNREGISTERED_TTL = 1              # RFC 9301 section 8.3: inside a site's prefix, nobody registered yet
MAX_CACHED_ANSWERS = 200_000      # encoded positive answers kept (see MapResolver._answers)
MAX_RLOC_SETS = 10_000            # encoded RLOC sets kept (see MapResolver._locators_of)

_ACTION_OF_RECORD = {Action.NO_ACTION: "no-action", Action.NATIVELY_FORWARD: "native-forward",
                     Action.SEND_MAP_REQUEST: "send-map-request"}
_RECORD_ACTION = {"no-action": Action.NO_ACTION, "native-forward": Action.NATIVELY_FORWARD,
                  "send-map-request": Action.SEND_MAP_REQUEST, "drop": Action.DROP_NO_REASON}

Source = tuple[str, int]          # (address, port) a datagram came from or goes to
Send = tuple[bytes, Source]
Key = tuple[int, Prefix]


class Refused(Exception):
    """A message we do not act on; ``reason`` is one short label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class Registration(NamedTuple):
    """One EID-prefix an ETR registered: what the API shows and what the
    Map-Resolver needs to answer for it or forward to it. A named tuple
    of values that cannot reference it back, which the Map-Server takes
    out of the collector's sight with its key, expiry entry and RLOC set
    (model/untracked.py): they were six tracked objects per registration,
    600,000 more for every full collection to walk with 100,000 EIDs
    registered, while the hub waited (docs/performance.rst)."""

    site: str
    mapping: Mapping            # as handed to the controller (expires set)
    xtr: Source                 # where the Map-Register came from
    xtr_id: bytes | None
    registered_at: float
    proxy_reply: bool           # the ETR asked us to answer for it (P bit)
    reply_ttl: int              # minutes, for the Map-Replies we send on its behalf

    @property
    def expires(self) -> float:
        return self.mapping.expires


@dataclass(frozen=True)
class Accepted:
    """The result of an accepted Map-Register."""

    site: str
    learn: list[Mapping]
    forget: list[Key]
    notify: bytes | None        # the signed Map-Notify, if the ETR asked for one


def eid_of(address: object) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """(IID, address) of an EID as records carry it: an Instance-ID LCAF
    around an IPv4/IPv6 address, or a bare address (IID 0). Anything else
    raises Refused("bad-lcaf")."""
    found = ip_eid(address)
    if found is not None:
        return found
    if isinstance(address, InstanceIdAddress):
        raise Refused("bad-lcaf", f"an Instance-ID LCAF around {type(address.address).__name__}")
    raise Refused("bad-lcaf", f"EID is a {type(address).__name__}")


def record_prefix(address: object, mask_len: int) -> Key:
    """(IID, prefix) of an EID record; host bits beyond ``mask_len`` are
    cleared (a prefix is what is registered, whatever the sender left there)."""
    iid, ip = eid_of(address)
    if mask_len > ip.max_prefixlen:
        raise Refused("malformed", f"mask-len {mask_len} for an IPv{ip.version} EID")
    width = ip.max_prefixlen
    mask = ((1 << mask_len) - 1) << (width - mask_len) if mask_len else 0
    key = iid, Prefix(ip.version, int(ip) & mask, mask_len)
    untrack(key[1])   # numbers only, kept by the registration: nothing for the collector to walk
    untrack(key)      # (CPython untracks a plain tuple by itself only when it holds no tuple subclass)
    return key


def _rlocs(locators: Iterable[LocatorRecord]) -> tuple[Rloc, ...]:
    """The RLOCs of a record that are IP addresses (bare or inside an
    Encapsulation Format LCAF); others (geo, AFI lists) are left out. An
    RLOC the ETR says is down (R clear) is kept at priority 255: unused."""
    out: dict = {}
    for loc in locators:
        address = loc.address.address if isinstance(loc.address, EncapsulationFormatAddress) else loc.address
        if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or address in out:
            continue
        out[address] = Rloc(address, loc.priority if loc.reachable else PRIORITY_UNUSED, loc.weight)
    return tuple(out.values())


class MapServer:
    """The sites and their registrations (RFC 9301 sections 8.2 and 8.3)."""

    def __init__(self, sites: Iterable[Site], clock: Callable[[], float]):
        self.sites = {s.name: s for s in sites}
        self.clock = clock
        self.registrations: dict[Key, Registration] = {}
        self.counts: dict[str, int] = {name: 0 for name in self.sites}
        self._expiry: list[tuple[float, int, Prefix]] = []
        self._rloc_sets: dict[tuple[Rloc, ...], tuple[Rloc, ...]] = {}   # see _shared
        # Site prefixes per (IID, version), most specific first.
        self._prefixes: dict[tuple[int, int], list[tuple[SitePrefix, Site]]] = {}
        for site in self.sites.values():
            for p in site.prefixes:
                self._prefixes.setdefault((p.iid, p.eid.version), []).append((p, site))
        for entries in self._prefixes.values():
            entries.sort(key=lambda e: -e[0].eid.prefixlen)

    # -- reading -------------------------------------------------------------
    def site_prefix(self, iid: int, prefix: Prefix) -> tuple[SitePrefix, Site] | None:
        """The most specific allowed prefix that contains ``prefix``."""
        for entry in self._prefixes.get((iid, prefix.version), ()):
            if prefix.subnet_of(entry[0].eid):
                return entry
        return None

    def prefixes(self, iid: int) -> list[Prefix]:
        """Every site prefix of ``iid``: known to the mapping system even
        while nobody has registered in it."""
        return [p.eid for version in (4, 6) for p, _ in self._prefixes.get((iid, version), ())]

    def of_site(self, name: str) -> list[Registration]:
        return sorted((r for r in self.registrations.values() if r.site == name),
                      key=lambda r: (r.mapping.iid, r.mapping.eid))

    # -- changing ------------------------------------------------------------
    def register(self, raw: bytes, message: MapRegister, source: Source) -> Accepted:
        """Check and apply one Map-Register (``raw`` is its wire form, for
        the HMAC). Raises Refused and changes nothing if any part is wrong."""
        if not message.records:
            raise Refused("malformed", "no EID records")
        keys = [record_prefix(r.eid, r.mask_len) for r in message.records]
        found = self.site_prefix(*keys[0])
        if found is None:
            raise Refused("prefix-outside-site", f"{keys[0][0]}:{keys[0][1]} is in no site's prefixes")
        site = found[1]
        key = site.key(message.key_id, message.alg_id)
        if key is None:
            raise Refused("unknown-key-id", f"site {site.name} has no key-id {message.key_id} "
                          f"with alg-id {message.alg_id}")
        if not verify(raw, key):
            raise Refused("bad-hmac", f"for site {site.name}")
        for iid, prefix in keys:
            allowed = self.site_prefix(iid, prefix)
            if allowed is None or allowed[1] is not site:
                raise Refused("prefix-outside-site", f"{iid}:{prefix} is not a prefix of site {site.name}")
            if prefix != allowed[0].eid and not allowed[0].accept_more_specifics:
                raise Refused("more-specific-not-allowed", f"{iid}:{prefix} is inside {allowed[0].eid} "
                              f"of site {site.name}, which takes no more specific prefixes")
        now = self.clock()
        learn: dict[Key, Registration] = {}
        forget: dict[Key, None] = {}
        for record, k in zip(message.records, keys):
            if record.ttl == 0:   # a TTL of 0 withdraws the registration
                learn.pop(k, None)
                forget[k] = None
                continue
            forget.pop(k, None)
            learn[k] = self._registration(site, record, k, message, source, now)
        withdrawn = [k for k in forget if k in self.registrations]
        total = self.counts[site.name] + sum(k not in self.registrations for k in learn) - len(withdrawn)
        if total > site.max_registrations:
            raise Refused("site-full", f"site {site.name} would hold {total} registrations, "
                          f"at most {site.max_registrations}")
        for k in withdrawn:
            del self.registrations[k]
        for k, registration in learn.items():
            self.registrations[k] = registration
            entry = (registration.expires, k[0], k[1])
            untrack(entry)
            heapq.heappush(self._expiry, entry)
        self.counts[site.name] = total
        notify = None
        if message.want_map_notify:
            notify = sign(MapNotify(message.nonce, message.records, xtr_id=message.xtr_id,
                                    site_id=message.site_id), key)
        return Accepted(site.name, [r.mapping for r in learn.values()], withdrawn, notify)

    def _registration(self, site: Site, record: EidRecord, key: Key, message: MapRegister, source: Source,
                      now: float) -> Registration:
        if message.use_ttl_for_timeout:
            lifetime, reply_ttl = record.ttl, DEFAULT_REPLY_TTL
        else:
            lifetime, reply_ttl = DEFAULT_REGISTRATION_MINUTES, record.ttl
        rlocs = self._shared(_rlocs(record.locators))
        action = "no-action" if rlocs else _ACTION_OF_RECORD.get(record.action, "drop")
        mapping = Mapping(key[0], key[1], rlocs, lifetime, action, site.source, now + 60.0 * lifetime)
        registration = Registration(site.name, mapping, source, message.xtr_id, now, message.proxy_reply,
                                    reply_ttl)
        untrack(registration)
        return registration

    def _shared(self, rlocs: tuple[Rloc, ...]) -> tuple[Rloc, ...]:
        """One RLOC set object for all the registrations that name the
        same RLOCs (a site's few ETRs), out of the collector's sight: each
        register decodes its RLOCs anew, and 100,000 registrations held
        three tracked objects each for the same set. Bounded like the
        Map-Resolver's encoded sets."""
        shared = self._rloc_sets.get(rlocs)
        if shared is None:
            if len(self._rloc_sets) >= MAX_RLOC_SETS:
                self._rloc_sets.clear()
            for rloc in rlocs:   # an address holds an int; an Rloc, it and two ints
                untrack(rloc.address)
                untrack(rloc)
            untrack(rlocs)
            shared = self._rloc_sets[rlocs] = rlocs
        return shared

    def expire(self) -> list[Key]:
        """Drop the registrations whose time is up (the controller's state
        forgets their mappings by the same expiry time)."""
        now = self.clock()
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            expires, iid, prefix = heapq.heappop(self._expiry)
            k = (iid, prefix)
            current = self.registrations.get(k)
            if current is not None and current.expires == expires:
                del self.registrations[k]
                self.counts[current.site] -= 1
                gone.append(k)
        return gone


class Resolution(NamedTuple):
    """What a Map-Request comes to: ``outcome`` is answered, negative or
    forwarded (the label of lisp_map_requests_total), ``sends`` the
    datagrams that carry it. (A named tuple: made once per request, and a
    frozen dataclass pays ``object.__setattr__`` per field.)"""

    outcome: str
    sends: list[Send]


class MapResolver:
    """Answers Encapsulated Map-Requests from everything the controller
    knows (RFC 9301 sections 8.3 and 8.4)."""

    def __init__(self, cache: MapCache, order: PrefixOrder, server: MapServer, settings: LispSettings,
                 family: int = 4):
        self.cache, self.order, self.server, self.settings = cache, order, server, settings
        self.family = family   # IP version of our socket: replies go to an ITR-RLOC of that version
        self._itr_type = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        self._socket_family = socket.AF_INET if family == 4 else socket.AF_INET6   # inet_ntop: str() in C
        self.negative_action = _RECORD_ACTION[settings.negative_action]
        # The encoded record of a positive answer, by (IID, IP version,
        # network, length, how the EID was written, TTL), and the mapping it
        # was made from (a replaced mapping is a new object, so an identity
        # check tells a stale answer), while no prefix came or went: most
        # requests ask again for what was asked before, and encoding is most
        # of the cost. Keys of plain ints and values that exist anyway keep
        # a full cache from adding objects the cyclic collector must visit.
        self._answers: dict[tuple, bytes] = {}
        self._answered_from: dict[tuple, Mapping] = {}
        self._answers_at = -1   # order.changes when they were made
        self._locators: dict[tuple[Rloc, ...], bytes] = {}   # see _locators_of

    def resolve(self, request: EncapsulatedControlMessage | Query) -> Resolution:
        """Answer an ECM: decoded by the codec, or its ``Query`` as
        ``common_request.recognise`` read it (the same answer either way)."""
        query = request if type(request) is Query else Query.of(request)
        if query is None:
            raise Refused("not-a-map-request", type(request.message).__name__)
        itr_type = self._itr_type
        for itr in query.itr_rlocs:
            if type(itr) is itr_type:
                break
        else:
            raise Refused("no-itr-rloc", f"no IPv{self.family} ITR-RLOC")
        records: list[bytes] = []
        forwards: dict[Source, None] = {}
        negative = True
        # query.eids leaves out EIDs we cannot look up (AFI 0 in a triggered RLOC-probe, a geo LCAF).
        for iid, address, wrap in query.eids:
            found = self.cache.lookup(iid, address) if iid <= IID_MAX else None
            if found is None:
                records.append(self._negative(iid, address, wrap))
                continue
            negative = False
            registration = self.server.registrations.get((found.iid, found.eid)) \
                if found.source.startswith("registered:") else None
            if registration is not None and not registration.proxy_reply \
                    and not self.server.sites[registration.site].proxy_reply:
                forwards[(registration.xtr[0], LISP_CONTROL_PORT)] = None
                continue
            ttl = registration.reply_ttl if registration is not None else (found.ttl or DEFAULT_REPLY_TTL)
            records.append(self._positive(found, address, wrap, ttl))
        if not records and not forwards:
            raise Refused("no-usable-record", "no EID record we can look up")
        sends: list[Send] = []
        if records:
            sends.append((encode_map_reply(query.nonce, records),
                          (socket.inet_ntop(self._socket_family, itr.packed), query.reply_port)))
        if forwards:
            forwarded = encode(dataclasses.replace(query.decoded_ecm(), to_etr=True))
            sends += [(forwarded, target) for target in forwards]
        outcome = "forwarded" if forwards else "negative" if negative else "answered"
        return Resolution(outcome, sends)

    def _positive(self, m: Mapping, address, wrap: bool, ttl: int) -> bytes:
        if self._answers_at != self.order.changes or len(self._answers) > MAX_CACHED_ANSWERS:
            self._answers.clear()
            self._answered_from.clear()
            self._answers_at = self.order.changes
        key = (m.iid, *m.eid, wrap, ttl)
        if self._answered_from.get(key) is m:
            return self._answers[key]
        prefix = self.order.narrowed(m.iid, address, m.eid)
        action = Action.NO_ACTION if m.rlocs else _RECORD_ACTION.get(m.action, Action.DROP_NO_REASON)
        record = eid_record_bytes(eid_address_bytes(m.iid, *prefix[:2], wrap), prefix[2],
                                  self._locators_of(m.rlocs), len(m.rlocs), ttl, action)
        if prefix == m.eid:   # not narrowed: the same answer for every address it holds
            self._answers[key] = record
            self._answered_from[key] = m
        return record

    def _locators_of(self, rlocs: tuple[Rloc, ...]) -> bytes:
        """The locator records of an RLOC set, encoded once per set: the
        mappings of a site share the few RLOC sets of its ETRs, and making
        and encoding the records was half of a first answer's cost."""
        encoded = self._locators.get(rlocs)
        if encoded is None:
            if len(self._locators) >= MAX_RLOC_SETS:
                self._locators.clear()
            encoded = self._locators[rlocs] = b"".join(
                encode_locator(LocatorRecord(r.address, r.priority, min(r.weight, 255))) for r in rlocs)
        return encoded

    def _negative(self, iid: int, address, wrap: bool) -> bytes:
        sites = self.server.prefixes(iid)
        hole = self.order.hole(iid, address, sites) or Prefix(address.version, int(address), address.max_prefixlen)
        inside_site = any(address in p for p in sites)
        ttl = UNREGISTERED_TTL if inside_site else self.settings.negative_ttl
        return eid_record_bytes(eid_address_bytes(iid, *hole[:2], wrap), hole[2], b"", 0, ttl, self.negative_action)

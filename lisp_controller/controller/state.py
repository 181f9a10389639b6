"""The desired state: config, store and control plane merged into the model.

Pure and in memory. A change is checked first (`check`, which raises and
mutates nothing), written to the store by the caller, and only then applied
here (`apply`), so memory never runs ahead of what is committed. Each
mapping put or removed is compiled at once into its shared map-cache flow
(controller/shared.py keeps those flows, their bytes and their history): a
change to one mapping re-renders one flow, not the whole table.

Ownership: a (IID, prefix) belongs to the config, to an endpoint (its host
mapping), or to the API. The API may only change its own. Below those sits
what the LISP control plane learned (a site's registration, `registered:
<site>`, or a Map-Reply, `map-resolver`): soft state, never stored, that a
config, endpoint or API mapping for the same key hides, and that comes back
when the hiding mapping goes (docs/control-plane.rst).

TTLs run out through a heap of expiry times, so finding what expired costs
nothing while nothing does, however big the map-cache.
"""
from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from lisp_controller.pipeline.compiler import mapping_flow_mod, mapping_group, miss_flow
from lisp_controller.config import Config
from lisp_controller.controller.shared import SharedFlows
from lisp_controller.controller.slices import Slices, sliced
from lisp_controller.errors import Conflict, NotFound
from lisp_controller.pipeline.flows import Group, encoded
from lisp_controller.model import (Bridge, Endpoint, MapCache, Mapping, ModelError, Prefix, endpoint_mappings,
                                   order_key, prefix_key)
from lisp_controller.model.untracked import untrack, untrack_all, untracked_list

Key = tuple  # (iid, IPv4Network | IPv6Network)


@dataclass
class Change:
    """One request's worth of edits, applied all or nothing."""

    put: list[Mapping] = field(default_factory=list)
    delete: list[Key] = field(default_factory=list)
    replace_api: bool = False  # API mappings not in `put` are deleted
    create_only: bool = False  # `put` must not replace an existing mapping
    put_endpoints: list[tuple[str, Endpoint]] = field(default_factory=list)  # (bridge label, ep)
    delete_endpoints: list[tuple[str, str]] = field(default_factory=list)  # (bridge label, port)
    # Soft state from the LISP control plane: never stored, always allowed.
    learn: list[Mapping] = field(default_factory=list)
    forget: list[Key] = field(default_factory=list)
    # The request to record with the change, in the same transaction (a
    # store.sqlite.Request: an API write sent with an Idempotency-Key).
    request: object | None = None

    @property
    def stored(self) -> bool:
        """Whether the store has anything to write for this change."""
        return bool(self.put or self.delete or self.replace_api or self.put_endpoints
                    or self.delete_endpoints)


def is_learned(source: str) -> bool:
    """Whether a mapping is soft state from the LISP control plane."""
    return source == "map-resolver" or source.startswith("registered:")


def key_text(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def _where(i: int, many: bool) -> str:
    return f"mappings[{i}]" if many else "mapping"


class State:
    def __init__(self, config: Config, mappings: Iterable[Mapping] = (),
                 endpoints: Iterable[tuple[str, Endpoint]] = (), clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.slice_clock = time.perf_counter  # times the slices of a big change (controller/slices.py)
        self.generation = 0
        self.cache = MapCache()
        self.shared = SharedFlows()  # the map-cache's flows, compiled once for every bridge
        self.encoded = self.shared.encoded  # their flow-mods by cookie
        self._config_bridges = {b.label: b for b in config.overlay.bridges}
        self.api_endpoints: dict[tuple[str, str], Endpoint] = {}
        # Everything the control plane learned, by prefix_key, whether it is
        # in the map-cache or hidden there by a config, endpoint or API mapping.
        self.learned: dict[tuple, Mapping] = {}
        # Heap of (expires, iid, eid); the collector walks neither it nor
        # its entries (model/untracked.py: numbers and a prefix).
        self._expiry: list[tuple[float, int, Prefix]] = untracked_list()
        self.bridges: dict[str, Bridge] = dict(self._config_bridges)
        miss = miss_flow(config.overlay.miss_action)
        self.shared.add(miss, *encoded(miss))
        for m in config.overlay.map_cache():  # the one definition of what the config maps
            self._put(m)
        self.apply(Change(put=list(mappings), put_endpoints=list(endpoints)), bump=False)

    # -- reading -----------------------------------------------------------
    def owner(self, key: Key) -> str | None:
        m = self.cache.get(*key)
        return m.source if m is not None else None

    def _owned(self, key: Key) -> str | None:
        """The owner the API must respect: learned mappings do not count."""
        owner = self.owner(key)
        return None if owner is None or is_learned(owner) else owner

    def api_mappings(self) -> list[Mapping]:
        return [m for m in self.cache if m.source == "api"]

    def mapping_cookie(self, key: Key) -> int | None:
        """The cookie of the map-cache flow a mapping compiles to (the same
        on every bridge), so flow statistics can be read back per mapping."""
        m = self.cache.get(*key)
        return mapping_flow_mod(m, prefix_key(*key))[0] if m is not None else None

    def mapping_group(self, key: Key) -> Group | None:
        """The select group a mapping's flow uses (its RLOC set), if any:
        its buckets' counters are the traffic per RLOC."""
        m = self.cache.get(*key)
        return mapping_group(m) if m is not None else None

    def bridge(self, label: str) -> Bridge | None:
        return self.bridges.get(label)

    def find_bridge(self, ref: str) -> Bridge | None:
        """A bridge by label, name or datapath ID."""
        return next((b for b in self.bridges.values() if b.answers_to(ref)), None)

    def shared_delta(self, since: int, slices: Slices | None = None) -> tuple[set[int], set[int]] | None:
        """Cookies of shared flows added and removed after generation
        `since`, or None if the history no longer reaches back that far
        (`slices`: controller/shared.py, `delta`)."""
        return self.shared.delta(since, self.generation, slices)

    def expired(self) -> Change:
        """What has reached its TTL: API mappings to delete (and from the
        store), learned ones to forget. Pops the expiry heap; an entry whose
        mapping changed or left since it was pushed is stale and skipped."""
        now = self.clock()
        change = Change()
        heap = self._expiry
        seen = set()
        while heap and heap[0][0] <= now:
            expires, iid, eid = heapq.heappop(heap)
            key = (iid, eid)
            if key in seen:  # pushed twice with the same expiry
                continue
            learned = self.learned.get(prefix_key(iid, eid))
            if learned is not None and learned.expires == expires:
                change.forget.append(key)
                seen.add(key)
            m = self.cache.get(iid, eid)
            if m is not None and m.expires == expires and m.source == "api":
                change.delete.append(key)
                seen.add(key)
        return change

    # -- changing ----------------------------------------------------------
    def check(self, change: Change, pause: Callable[[], None] | None = None) -> None:
        """Raise Conflict, NotFound or ModelError if `change` may not be
        applied; change nothing. `pause` is called between slices of the
        mappings (controller/slices.py): the caller holds what keeps the
        state as it is meanwhile (the controller's change lock)."""
        seen: dict[int, None] = {}  # keys as ints (see _int_key)
        many = len(change.put) > 1 or change.replace_api
        slices = Slices(pause, clock=self.slice_clock)
        for i, m in enumerate(sliced(change.put, slices)):
            key = m.key
            ikey = _int_key(key)
            if ikey in seen:
                raise ModelError(f"{_where(i, many)}.eid", f"{key_text(key)} appears twice in this request")
            seen[ikey] = None
            owner = self._owned(key)
            if owner in ("config", "endpoint"):
                raise Conflict(f"{_where(i, many)}.eid", f"{key_text(key)} is owned by the {owner} "
                               "and cannot be changed through the API")
            if owner == "api" and change.create_only:
                raise Conflict(f"{_where(i, many)}.eid", f"{key_text(key)} already exists "
                               "(PUT replaces a mapping)")
        for key in sliced(change.delete, slices):
            owner = self.owner(key)
            if owner is None:
                raise NotFound("eid", f"no mapping for {key_text(key)}")
            if owner != "api":
                raise Conflict("eid", f"{key_text(key)} is owned by the {owner} "
                               "and cannot be changed through the API")
        for i, (label, ep) in enumerate(change.put_endpoints):
            self._check_endpoint(label, ep, "endpoint" if len(change.put_endpoints) == 1 else f"endpoints[{i}]")
        for label, port in change.delete_endpoints:
            if (label, port) not in self.api_endpoints:
                if self._config_owns_port(label, port):
                    raise Conflict("port", f"endpoint {port} on bridge {label} is owned by the config")
                raise NotFound("port", f"no endpoint on port {port} of bridge {label}")

    def _config_owns_port(self, label: str, port: str) -> bool:
        bridge = self._config_bridges.get(label)
        return bridge is not None and any(e.port == port for e in bridge.endpoints)

    def _check_endpoint(self, label: str, ep: Endpoint, where: str) -> None:
        bridge = self.bridges.get(label)
        if bridge is None:
            raise NotFound(f"{where}.bridge", f"no bridge {label!r} in the config")
        if ep.port == bridge.tunnel_port:
            raise Conflict(f"{where}.port", f"{ep.port!r} is the bridge's tunnel port")
        if any(e.port == ep.port for e in bridge.endpoints):
            raise Conflict(f"{where}.port", f"port {ep.port} of bridge {label} already has an endpoint")
        for addr in ep.eids:
            key = (ep.iid, ipaddress.ip_network(addr))
            owner = self._owned(key)
            if owner is not None:
                raise Conflict(f"{where}.eids", f"{key_text(key)} is already mapped (by the {owner})")

    def apply(self, change: Change, bump: bool = True, pause: Callable[[], None] | None = None,
              stream: Callable[[list[tuple[int, bytes | None]]], None] | None = None) -> None:
        """Apply a checked (and committed) change. `pause` is called
        between slices of the change (controller/slices.py: a few
        milliseconds or 2,000 mappings) so a big change lets the hub
        breathe. `stream`, if given, receives the shared flows' changes as
        they are made, in order, at the end of each slice and of the
        change: (cookie, flow-mod) for an added flow, (cookie, None) for a
        removed one; the bridges can then take a big change while it is
        still being made."""
        now = self.clock()
        shared = self.shared
        shared.begin(track=bump, stream=stream)
        flush = shared.flush
        slices = Slices(pause, clock=self.slice_clock)

        def tick() -> None:
            if slices.due():
                flush()
                self._untrack()
                slices.pause()

        if change.replace_api:
            keep = {}  # keys as ints (see _int_key)
            for m in change.put:
                keep[_int_key(m.key)] = None
                tick()
            for m in self.cache.snapshot():  # the map-cache changes below
                if m.source == "api" and _int_key(m.key) not in keep:
                    self._remove(m.key)
                tick()
        for key in change.delete:
            self._remove(key)
            tick()
        for m in change.put:
            self._put(stamp(m, now) if m.expires is None else m)
            tick()
        for label, port in change.delete_endpoints:
            ep = self.api_endpoints.pop((label, port))
            for m in endpoint_mappings(self.bridges[label], ep):
                self._remove(m.key)
            self._rebuild_bridge(label)
        for label, ep in change.put_endpoints:
            if label not in self.bridges:
                continue  # a stored endpoint whose bridge left the config
            self.api_endpoints[(label, ep.port)] = ep
            for m in endpoint_mappings(self.bridges[label], ep):
                self._put(m)
            self._rebuild_bridge(label)
        for key in change.forget:
            self._forget(key)
            tick()
        for m in change.learn:
            self._learn(stamp(m, now) if m.expires is None else m)
            tick()
        flush()
        self._untrack()
        # The generation moves on once the change is whole, its history too.
        generation = self.generation + 1 if bump else None
        shared.end(generation, pause, self.slice_clock)
        if bump:
            self.generation = generation

    def _untrack(self) -> None:
        """Hide the dicts of a million mappings from the collector again:
        CPython tracks a dict again when a mapping is put in it, and every
        full collection would walk it (model/untracked.py). Between the
        slices of a change and at its end: collections run while it
        pauses, and after it."""
        self.cache.untrack()
        self.shared.untrack()
        untrack_all((self.learned,))

    def _rebuild_bridge(self, label: str) -> None:
        base = self._config_bridges[label]
        extra = tuple(ep for (lbl, _), ep in sorted(self.api_endpoints.items()) if lbl == label)
        self.bridges[label] = dataclasses.replace(base, endpoints=base.endpoints + extra)

    def _learn(self, m: Mapping) -> None:
        """Remember a learned mapping; it reaches the map-cache unless a
        config, endpoint or API mapping holds the key. A site's registration
        outranks a Map-Reply's answer for the same prefix."""
        ikey = prefix_key(m.iid, m.eid)
        old = self.learned.get(ikey)
        if old is not None and m.source == "map-resolver" and old.source != "map-resolver":
            return
        self.learned[ikey] = m
        self._schedule(m)
        if self._owned(m.key) is None:
            self._put(m)

    def _forget(self, key: Key) -> None:
        ikey = prefix_key(*key)
        if self.learned.pop(ikey, None) is None:
            return
        current = self.cache.get(*key)
        if current is not None and is_learned(current.source):
            self._remove(key)

    def _schedule(self, m: Mapping) -> None:
        if m.expires is not None:
            entry = (m.expires, m.iid, m.eid)
            untrack(entry)
            heapq.heappush(self._expiry, entry)

    def _put(self, m: Mapping) -> None:
        key = prefix_key(m.iid, m.eid)
        if m.source == "api":
            self._schedule(m)
        cookie, data = mapping_flow_mod(m, key)
        old = self.cache.add(m, key)
        if old is not None:
            # The replaced mapping's cookie is made again rather than kept:
            # a dict of a million cookies costs more than this rare step.
            old_cookie = mapping_flow_mod(old, key)[0]
            if old_cookie == cookie:  # the same flow (a new TTL, say): nothing for the bridges
                self.shared.renew(cookie, m)
                return
            self.shared.drop(old_cookie)
        self.shared.add(m, cookie, data)

    def _remove(self, key: Key) -> None:
        """Take a mapping out of the map-cache; what the control plane
        learned for the same key, hidden until now, takes its place."""
        ikey = prefix_key(*key)
        m = self.cache.remove(key[0], key[1], ikey)
        if m is not None:
            self.shared.drop(mapping_flow_mod(m, ikey)[0])
            hidden = self.learned.get(ikey)
            if hidden is not None and hidden is not m:
                self._put(hidden)


def _int_key(key: Key) -> int:
    """(IID, prefix) as one int (model.order_key), to remember a million
    keys by. A dict of ints is never tracked by the cyclic collector and
    is freed in milliseconds, in the order it was made; a set of a million
    (IID, prefix) tuples cost every full collection a walk (a tuple
    holding a prefix is never untracked) and 0.3 s to free, in one step
    of the hub."""
    return order_key(*prefix_key(*key))


def stamp(m: Mapping, now: float) -> Mapping:
    """Give an API or learned mapping with a TTL its expiry time (TTL is in
    minutes). Config mappings never expire: the config is always true."""
    if m.ttl is None or not (m.source == "api" or is_learned(m.source)):
        return m
    return m._replace(expires=now + 60.0 * m.ttl)

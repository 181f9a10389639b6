"""The ETR side: every bridge's local EIDs registered with every configured
Map-Server (RFC 9301 sections 5.6, 5.7 and 8.2), and what became of each.

Pure and clock-driven: `update` takes the bridges (after every change of
endpoints), `poll` is called when `next_due` says, `on_notify` takes each
Map-Notify received. Each returns the datagrams to send; nothing here owns a
socket, so the tests run it on an injected clock.

What is registered: one EID record per local EID address (a host prefix),
per Instance ID, with the RLOC of the bridge that holds the endpoint as its
only locator (L and R bits set). Records go many to a message, split so no
Map-Register exceeds `MAX_MESSAGE` bytes. A removed EID is withdrawn with a
record TTL of 0. A Map-Notify is accepted only if its nonce is one we sent
to that Map-Server and its HMAC verifies with that Map-Server's key; a
missing one is retried with doubling waits, and until it comes the EIDs show
as failing (docs/control-plane.rst, "Registration").
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from lisp_controller.lisp.addresses import ENCAP_VXLAN_GPE, EncapsulationFormatAddress, InstanceIdAddress
from lisp_controller.lisp.auth import ALGORITHMS, sign, verify
from lisp_controller.lisp.config import MapServerPeer, XtrSettings
from lisp_controller.lisp.messages import LISP_CONTROL_PORT, MapNotify, MapRegister
from lisp_controller.lisp.records import EidRecord, LocatorRecord, encode_eid_record
from lisp_controller.model import Bridge, IPAddress, as_prefix

MAX_MESSAGE = 1400  # bytes of a Map-Register (the UDP payload): no fragmentation on a 1,500-byte path
RETRY_FIRST = 1.0  # seconds to wait for a Map-Notify; doubled per retry, up to the register interval
WITHDRAW_ATTEMPTS = 5  # a withdrawal nobody confirms is given up after this many sends

Key = tuple  # (iid, Prefix)


class Datagram(NamedTuple):
    destination: IPAddress
    port: int
    data: bytes


class Locator(NamedTuple):
    rloc: IPAddress
    gpe: bool  # advertised as LISP-GPE capable (Encapsulation Format LCAF)
    bridge: str


@dataclass
class EidState:
    """One EID at one Map-Server, as the API shows it."""

    locator: Locator
    state: str = "registering"  # registering | registered | failing | withdrawing
    registered_at: float | None = None  # last confirmed (or sent, without Map-Notify)
    attempts: int = 0  # sends since the last confirmation
    error: str | None = None


@dataclass
class _Pending:
    server: MapServerPeer
    keys: tuple[Key, ...]
    withdraw: bool
    attempt: int
    deadline: float
    locators: tuple[Locator | None, ...] = ()  # what each key was sent with


def local_eids(bridges: Iterable[Bridge], advertise_gpe: bool) -> dict[Key, Locator]:
    """(IID, host prefix) -> the locator it is registered with, for every
    endpoint address of every bridge."""
    out: dict[Key, Locator] = {}
    for bridge in bridges:
        gpe = advertise_gpe and bridge.profile == "lisp-gpe"
        for ep in bridge.endpoints:
            for address in ep.eids:
                out[(ep.iid, as_prefix(address))] = Locator(bridge.rloc, gpe, bridge.label)
    return out


def eid_record(key: Key, locator: Locator | None, ttl: int) -> EidRecord:
    """The record registering (or, with ttl 0 and no locator, withdrawing) one EID."""
    iid, prefix = key
    eid = InstanceIdAddress(iid, prefix.network_address)
    if locator is None:
        return EidRecord(eid, prefix.prefixlen, (), ttl=ttl, authoritative=True)
    address = EncapsulationFormatAddress(ENCAP_VXLAN_GPE, locator.rloc) if locator.gpe else locator.rloc
    return EidRecord(eid, prefix.prefixlen, (LocatorRecord(address, 1, 100, local=True, reachable=True),),
                     ttl=ttl, authoritative=True)


def split(records: list[EidRecord], header: int, limit: int = MAX_MESSAGE) -> list[list[EidRecord]]:
    """Records in groups whose message (a `header`-byte head plus the
    records) stays within `limit` bytes, and at most 255 records (the count
    field). A record too big alone still goes, alone."""
    groups: list[list[EidRecord]] = []
    current: list[EidRecord] = []
    size = header
    for record in records:
        length = len(encode_eid_record(record))
        if current and (size + length > limit or len(current) == 255):
            groups.append(current)
            current, size = [], header
        current.append(record)
        size += length
    if current:
        groups.append(current)
    return groups


def record_ttl(interval: float) -> int:
    """Minutes a registered record is valid for: three register intervals
    (a Map-Server drops a registration not refreshed for that long), so a
    remote ITR asks again about as soon as a stale registration is gone."""
    return max(1, math.ceil(3 * interval / 60))


class Registrar:
    def __init__(self, settings: XtrSettings, clock: Callable[[], float] = time.time,
                 nonce: Callable[[int], bytes] = os.urandom):
        self.settings = settings
        self.clock = clock
        self._nonce = nonce
        self.ttl = record_ttl(settings.register_interval)
        self.eids: dict[Key, Locator] = {}
        self.entries: dict[IPAddress, dict[Key, EidState]] = {ms.address: {} for ms in settings.map_servers}
        self._pending: dict[bytes, _Pending] = {}
        # The first registration goes out with the first `update`; the
        # periodic refresh follows an interval later.
        first = clock() + settings.register_interval
        self._next_refresh: dict[IPAddress, float] = {ms.address: first for ms in settings.map_servers}
        self.counts: dict[str, int] = {}  # Map-Notify outcomes and messages sent

    # -- inputs ----------------------------------------------------------------
    def update(self, bridges: Iterable[Bridge]) -> list[Datagram]:
        """The local EIDs now: new or moved ones are registered at once,
        removed ones withdrawn (every Map-Server)."""
        desired = local_eids(bridges, self.settings.advertise_gpe)
        changed = [k for k, loc in desired.items() if self.eids.get(k) != loc]
        removed = [k for k in self.eids if k not in desired]
        self.eids = desired
        out: list[Datagram] = []
        for ms in self.settings.map_servers:
            entries = self.entries[ms.address]
            for key in changed:
                entries[key] = EidState(desired[key])
            if changed:
                out += self._send(ms, changed, withdraw=False, attempt=1)
            gone = [k for k in removed if k in entries]
            for key in gone:
                entries[key].state = "withdrawing"
                entries[key].attempts = 0
            if gone:
                out += self._send(ms, gone, withdraw=True, attempt=1)
        return out

    def poll(self) -> list[Datagram]:
        """Registrations due again (every register interval) and the
        retries of those whose Map-Notify did not come."""
        now = self.clock()
        out: list[Datagram] = []
        for nonce, p in list(self._pending.items()):
            if p.deadline > now:
                continue
            del self._pending[nonce]
            entries = self.entries[p.server.address]
            keys = [k for k in p.keys if k in entries and (entries[k].state == "withdrawing") == p.withdraw]
            text = f"no Map-Notify from {p.server.address} after {p.attempt} attempt(s)"
            for key in keys:
                entries[key].error = text
                if not p.withdraw:
                    entries[key].state = "failing"
            self._count("notify_timeouts")
            if p.withdraw and p.attempt >= WITHDRAW_ATTEMPTS:
                for key in keys:
                    del entries[key]  # given up: the Map-Server times it out on its own
                continue
            if keys:
                out += self._send(p.server, keys, p.withdraw, p.attempt + 1)
        for ms in self.settings.map_servers:
            if now < self._next_refresh[ms.address]:
                continue
            self._next_refresh[ms.address] = now + self.settings.register_interval
            # A full refresh supersedes what is still waiting for its Map-Notify.
            for nonce, p in list(self._pending.items()):
                if p.server is ms and not p.withdraw:
                    del self._pending[nonce]
            if self.eids:
                out += self._send(ms, list(self.eids), withdraw=False, attempt=1, refresh=True)
        return out

    def next_due(self) -> float:
        """The clock time `poll` has something to do next."""
        times = list(self._next_refresh.values()) + [p.deadline for p in self._pending.values()]
        return min(times) if times else math.inf

    def on_notify(self, raw: bytes, notify: MapNotify) -> str:
        """Take a Map-Notify (its bytes as received, and decoded). Returns
        the outcome, also counted: accepted, unknown-nonce (never sent, or
        already answered: a replay) or bad-auth (HMAC or key-id wrong)."""
        pending = self._pending.get(notify.nonce)
        if pending is None:
            return self._count("notify_unknown_nonce", "unknown-nonce")
        if notify.key_id != pending.server.key.key_id or not verify(raw, pending.server.key):
            return self._count("notify_bad_auth", "bad-auth")
        del self._pending[notify.nonce]
        entries = self.entries[pending.server.address]
        now = self.clock()
        for key, locator in zip(pending.keys, pending.locators):
            entry = entries.get(key)
            if entry is None:
                continue
            if pending.withdraw:
                if entry.state == "withdrawing":
                    del entries[key]
            elif entry.state != "withdrawing" and entry.locator == locator == self.eids.get(key):
                entry.state, entry.registered_at, entry.attempts, entry.error = "registered", now, 0, None
        return self._count("notify_accepted", "accepted")

    # -- views -------------------------------------------------------------------
    def status(self) -> list[dict]:
        """Per EID per Map-Server: state, locator, last registration."""
        out = []
        for server, entries in self.entries.items():
            for (iid, prefix), e in sorted(entries.items()):
                out.append({"iid": iid, "eid": str(prefix), "map_server": str(server),
                            "rloc": str(e.locator.rloc), "bridge": e.locator.bridge, "state": e.state,
                            "registered_at": e.registered_at, "attempts": e.attempts, "error": e.error})
        return out

    def state_counts(self) -> dict[tuple[str, str], int]:
        """(map-server, state) -> EIDs, for the metrics."""
        counts: dict[tuple[str, str], int] = {}
        for server, entries in self.entries.items():
            for e in entries.values():
                counts[(str(server), e.state)] = counts.get((str(server), e.state), 0) + 1
        return counts

    # -- sending -------------------------------------------------------------------
    def _send(self, ms: MapServerPeer, keys: list[Key], withdraw: bool, attempt: int,
              refresh: bool = False) -> list[Datagram]:
        entries = self.entries[ms.address]
        now = self.clock()
        records = [eid_record(k, None if withdraw else self.eids[k], 0 if withdraw else self.ttl)
                   for k in keys]
        header = 16 + ALGORITHMS[ms.key.alg_id][1]
        wait = min(RETRY_FIRST * 2 ** (attempt - 1), self.settings.register_interval)
        out = []
        start = 0
        for group in split(records, header):
            group_keys = tuple(keys[start:start + len(group)])
            start += len(group)
            nonce = self._nonce(8)
            message = MapRegister(nonce, tuple(group), proxy_reply=self.settings.proxy_reply,
                                  want_map_notify=self.settings.want_map_notify)
            out.append(Datagram(ms.address, LISP_CONTROL_PORT, sign(message, ms.key)))
            self._count("withdrawals_sent" if withdraw else "registers_sent")
            for key in group_keys:
                entry = entries.get(key)
                if entry is None:
                    continue
                entry.attempts = 0 if refresh and entry.state == "registered" else entry.attempts + 1
                if not self.settings.want_map_notify:  # nothing will confirm it: sent is all we know
                    if withdraw:
                        del entries[key]
                    else:
                        entry.state, entry.registered_at, entry.error = "registered", now, None
            if self.settings.want_map_notify:
                self._pending[nonce] = _Pending(ms, group_keys, withdraw, attempt, now + wait,
                                                tuple(None if withdraw else self.eids[k] for k in group_keys))
        return out

    def _count(self, name: str, result: str = "") -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return result

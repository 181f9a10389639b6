"""Who may be which datapath: one live OpenFlow connection per datapath ID.

A switch names its datapath ID in its FEATURES_REPLY, and nothing in
OpenFlow proves it. Whoever reaches the port could claim a configured
bridge's ID and take its session, and two bridges given one ID would cut
each other off. So a claim is decided here, before the application sees
the datapath (docs/reliability.rst, "OpenFlow admission"):

- with TLS, the certificate must be the one the bridge's `tls_peer`
  names, and a certificate bound to some bridges cannot claim others;
- a claim on an ID whose session is alive (it answers an echo within
  PROBE_TIMEOUT) is refused, logged with both addresses and listed as a
  conflict (`GET /v1/datapaths`, the status page);
- a session that does not answer is displaced, not closed: if the
  connection that took over goes away and the old one still answers, it
  is adopted again.

Connections are the listener's (openflow/listener.py): this module needs
their `where`, `peer`, `datapath_id`, `probe(timeout)` and `close(reason)`.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from os_ken.lib import hub

from lisp_controller.openflow.tls import PeerIdentity, TlsPeer

LOG = logging.getLogger("lisp_controller.openflow.admission")
PROBE_TIMEOUT = 2.0  # seconds a session has to answer an echo before it counts as dead
CONFLICT_MEMORY = 120.0  # seconds a conflict stays listed after its last attempt
MAX_CONFLICTS = 100
REPEAT_EVERY = 60.0  # seconds between log lines about the same conflict


def identity_problem(dpid: int, peer: PeerIdentity | None, peers: dict[int, TlsPeer],
                     labels: dict[int, str]) -> str | None:
    """Why a connection with certificate `peer` may not be datapath `dpid`,
    or None. `peers`: datapath ID -> the certificate its bridge expects."""
    expected = peers.get(dpid)
    if expected is not None:
        if expected.matches(peer):
            return None
        return (f"certificate {peer or 'none'} is not bridge {labels.get(dpid, f'{dpid:016x}')}'s "
                f"(tls_peer {expected})")
    bound = sorted(labels.get(d, f"{d:016x}") for d, p in peers.items() if p.matches(peer))
    if bound:
        return f"certificate {peer} belongs to bridge {', '.join(bound)}"
    return None


class LogLimiter:
    """At most one log line per key and interval; says how many it held back."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self._seen: dict[object, tuple[float, int]] = {}  # key -> (last logged, held back since)

    def allow(self, key: object) -> int | None:
        """None: stay quiet. Otherwise log now, mentioning the count
        returned (lines held back since the last one)."""
        now = self.clock()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.every:
            self._seen[key] = (last, held + 1)
            return None
        if len(self._seen) > 1000:  # keys from many sources: forget the old ones
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.every}
        self._seen[key] = (now, 0)
        return held


@dataclass
class Conflict:
    """A claim refused (or a session displaced) on one datapath ID."""

    datapath_id: int
    bridge: str | None
    reason: str  # "duplicate" | "certificate" | "displaced"
    holder: str | None  # the session that kept (or lost) the ID
    claimant: str
    message: str
    count: int
    first: float
    last: float

    def view(self) -> dict:
        return {"datapath_id": f"{self.datapath_id:016x}", "bridge": self.bridge, "reason": self.reason,
                "holder": self.holder, "claimant": self.claimant, "message": self.message,
                "count": self.count, "first": _iso(self.first), "last": _iso(self.last)}


class Admission:
    def __init__(self, labels: dict[int, str], peers: dict[int, TlsPeer],
                 probe_timeout: float = PROBE_TIMEOUT, clock: Callable[[], float] = time.time):
        self.labels = labels  # configured datapath ID -> bridge label
        self.peers = peers
        self.probe_timeout = probe_timeout
        self.clock = clock
        # Datapath ID -> its connections: [0] holds it, the rest were
        # displaced (newest first) and are kept while their TCP lives.
        self._holders: dict[int, list] = {}
        self._locks: dict[int, tuple[object, int]] = {}  # ID -> (semaphore, users)
        self._conflicts: dict[tuple, Conflict] = {}
        self._quiet = LogLimiter(REPEAT_EVERY)

    def claim(self, conn, dpid: int) -> str | None:
        """`conn` says it is datapath `dpid`: None if it now holds it, or
        the reason it is refused (logged and recorded; the caller closes
        it). May block for an echo to the current holder."""
        label = self.labels.get(dpid)
        what = f"datapath {dpid:016x}" + (f" (bridge {label})" if label and label != f"{dpid:016x}" else "")
        problem = identity_problem(dpid, conn.peer, self.peers, self.labels)
        if problem is not None:
            self._refused(dpid, "certificate", None, conn.where,
                          f"{what}: connection from {conn.where} refused: {problem}")
            return "certificate"
        with self._lock(dpid):
            holders = self._holders.setdefault(dpid, [])
            holder = holders[0] if holders else None
            if holder is not None and holder.probe(self.probe_timeout):
                self._refused(dpid, "duplicate", holder.where, conn.where,
                              f"{what}: connection from {conn.where} claims it, but the session from "
                              f"{holder.where} holds it and answers: refused. Two switches with one "
                              "datapath ID, or one impersonating another")
                return "duplicate-datapath-id"
            if holder is not None and not holder.closed:  # (a closed one is leaving anyway)
                displaced = self._record(
                    dpid, "displaced", holder.where, conn.where,
                    f"{what}: the session from {holder.where} did not answer an echo within "
                    f"{self.probe_timeout:g} s; the connection from {conn.where} takes over (the old "
                    "one is adopted again if it answers once the new one has gone)")
                LOG.warning("%s", displaced.message)
            conn.datapath_id = dpid
            holders.insert(0, conn)
        return None

    def gone(self, conn):
        """`conn` has ended. If it held its datapath ID, the newest
        displaced connection that still answers holds it again and is
        returned (for the application to adopt); the dead ones are closed."""
        dpid = conn.datapath_id
        if dpid is None or dpid not in self._holders:
            return None
        with self._lock(dpid):
            holders = self._holders.get(dpid, [])
            if conn not in holders:
                return None
            held = holders[0] is conn
            holders.remove(conn)
            adopted = None
            while held and holders:
                candidate = holders[0]
                if candidate.probe(self.probe_timeout):
                    LOG.warning("datapath %016x: the connection from %s has gone; the session from %s, "
                                "displaced before, still answers and is adopted again", dpid, conn.where,
                                candidate.where)
                    adopted = candidate
                    break
                holders.pop(0)
                candidate.close("displaced-dead")
            if not holders:
                del self._holders[dpid]
        return adopted

    def conflicts(self) -> list[dict]:
        """The conflicts seen in the last CONFLICT_MEMORY seconds, newest first."""
        now = self.clock()
        for key in [k for k, c in self._conflicts.items() if now - c.last > CONFLICT_MEMORY]:
            del self._conflicts[key]
        return [c.view() for c in sorted(self._conflicts.values(), key=lambda c: -c.last)]

    # -- inside ----------------------------------------------------------------
    def _refused(self, dpid: int, reason: str, holder: str | None, claimant: str, message: str) -> None:
        conflict = self._record(dpid, reason, holder, claimant, message)
        held = self._quiet.allow((dpid, reason, _host(claimant)))
        if held is not None:
            again = f" (refused {conflict.count} times since {_iso(conflict.first)})" if conflict.count > 1 else ""
            LOG.error("%s%s", message, again)

    def _record(self, dpid: int, reason: str, holder: str | None, claimant: str, message: str) -> Conflict:
        """One entry per datapath ID, reason and claiming host (a switch
        that retries comes from a new port each time)."""
        key = (dpid, reason, _host(claimant))
        now = self.clock()
        conflict = self._conflicts.get(key)
        if conflict is None:
            if len(self._conflicts) >= MAX_CONFLICTS:
                del self._conflicts[min(self._conflicts, key=lambda k: self._conflicts[k].last)]
            conflict = self._conflicts[key] = Conflict(dpid, self.labels.get(dpid), reason, holder,
                                                       claimant, message, 0, now, now)
        conflict.holder, conflict.claimant, conflict.message = holder, claimant, message
        conflict.count += 1
        conflict.last = now
        return conflict

    @contextlib.contextmanager
    def _lock(self, dpid: int):
        """One claim at a time per datapath ID (a claim may wait for an echo)."""
        sem, users = self._locks.get(dpid, (None, 0))
        if sem is None:
            sem = hub.Semaphore(1)
        self._locks[dpid] = (sem, users + 1)
        try:
            with sem:
                yield
        finally:
            sem, users = self._locks[dpid]
            if users == 1:
                del self._locks[dpid]
            else:
                self._locks[dpid] = (sem, users - 1)


def _host(where: str) -> str:
    return where.rsplit(":", 1)[0]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

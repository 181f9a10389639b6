"""Learned mappings onto the bridges: what the xTR's Map-Replies taught,
installed with the packets that waited for it (docs/control-plane.rst,
"The first packet"). Run by ``xtr.py``, which hands it each accepted
Map-Reply's resolution.

Two greenthreads: the installer sends what Map-Replies taught to the
bridges at once, and the committer commits all of it that gathered
meanwhile as one change (learned mappings: never stored, below config,
endpoint and API ones).

A learned mapping's flow does not wait for its commit: the installer sends
the same flow-mod the state will make (``mapping_flow_mod``) to every
bridge this instance programs, outside any bundle, with the held packets
right behind it on the same connection (a switch takes one connection's
messages in order, so they meet the flow: tests/test_bundle_ovs.py), and a
barrier to confirm it. The commit comes when the change lock is free, which
a bulk request holds for seconds (the bridges then already hold the flow:
adding it again changes nothing). Bundles are written paced
(openflow/switch.py), so during a bulk all of this waits behind at most
128 KB of it. Until its commit is confirmed, a learned flow sent this way
is one the bridges should hold (`flows_ahead`: a deep check leaves it
alone), and a bridge that confirmed it is told so (`note_installed`): the
sync of the commit sends nothing for it. Only mappings that need no select group (one RLOC, or negative)
and whose key nobody else holds go this way; the others are committed
first and their packets follow the bridges' barriers. A bulk that brings a
mapping for the same key still wins: its bundle commits after the flow
that went ahead, and replaces it.

A switch that refuses a learned flow (a full table) says so before it
reads the packets behind it; they miss again and come back through the
miss meter, and are dropped and counted (``misses_refused``), as is any
later packet for that mapping there: sent round again, they would loop
(docs/control-plane.rst, "The first packet").

Open vSwitch drops a packet tunnelled to an RLOC whose underlay next hop it
has not resolved yet (docs/datapath.rst). So when a Map-Reply names an RLOC
the bridge of a held packet has not sent to lately, a probe goes there at
once, before the flows are installed: a packet-out into the tunnel with an
Instance ID nothing uses (the remote ETR drops it) and an IPv4 TTL of 0,
which makes OVS resolve the next hop while the flows are being confirmed.

Of the controller application it touches only its public `apply_change`,
`state` and `sessions`.
"""
from __future__ import annotations

import functools
import logging
import struct
import time
from typing import Callable

from os_ken.lib import hub

from lisp_controller.controller.state import Change
from lisp_controller.lisp.headers import internet_checksum
from lisp_controller.lisp.resolver import Held, Resolution
from lisp_controller.model import IPAddress, MapCache, Mapping, prefix_key
from lisp_controller.openflow import encode
from lisp_controller.openflow.errors import describe_error
from lisp_controller.pipeline.actions import output, set_field
from lisp_controller.pipeline.compiler import mapping_flow_mod, rloc_target
from lisp_controller.pipeline.flows import Group

LOG = logging.getLogger("lisp_controller.xtr")  # the xTR role's log, one name for all of it
_ETH_IP = 0x0800
PROBE_IID = 0xFFFFFF  # the Instance ID of next-hop probes: no mapping uses it
PROBE_EVERY = 60.0  # seconds before a (bridge, RLOC) pair is probed again
PROBE_SETTLE = 0.003  # seconds a held packet waits after its RLOC's probe (an ARP exchange)
AHEAD_MAX = 256  # learned flows sent in one write (a batch of more goes in several)
REFUSED_KEPT = 65536  # refused (bridge, mapping) pairs remembered at most


def probe_frame() -> bytes:
    """What a next-hop probe carries: an IPv4 packet with TTL 0 and no
    payload (protocol 253, for experiments), from and to 0.0.0.0."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 0, 253, 0, bytes(4), bytes(4)))
    ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
    return bytes(12) + struct.pack("!H", _ETH_IP) + bytes(ip)


_PROBE = probe_frame()


class LearnedInstaller:
    """The installer and the committer of one xTR, and what they keep
    between them: the flows sent ahead of their commit, the flows the
    bridges refused, the RLOCs probed lately. ``event`` counts one of its
    events among the resolver's (GET /v1/lisp ``resolver``)."""

    def __init__(self, app, event: Callable[..., None]):
        self.app = app
        self._event = event
        self._resolved: list[Resolution] = []
        self._resolved_ready = hub.Event()
        # Learned mappings whose flows went to the bridges ahead of their
        # commit, until it is confirmed (see the module's docstring); their
        # flow-mods by cookie, and their cookies by prefix_key (numbers
        # only: a bulk holds thousands here for seconds, out of the
        # collector's sight).
        self._ahead = MapCache()
        self._ahead_flows: dict[int, bytes] = {}
        self._ahead_cookies: dict[tuple, int] = {}
        # (datapath ID, mapping key) -> the cookie of the learned flow that
        # bridge refused: a packet for it there is dropped, not sent round.
        self._refused: dict[tuple[int, tuple], int] = {}
        self._to_commit: list[Resolution] = []   # resolutions whose packets wait for the commit
        # Mappings sent ahead whose bridges answered (their barriers, or a
        # failure): the next commit's. One still in flight waits, so that
        # the bridges are told it is installed before the commit's sync.
        self._sent: list[Mapping] = []
        self._commit_ready = hub.Event()
        self._probed: dict[tuple, float] = {}  # (datapath ID, RLOC) -> monotonic time of its last probe

    def loops(self) -> list[Callable[[], None]]:
        """The greenthreads to spawn: the installer and the committer."""
        return [self._install_loop, self._commit_loop]

    def resolved(self, result: Resolution) -> None:
        """An accepted Map-Reply's resolution: probe its new RLOCs now, and
        install it in the installer's next batch."""
        self.probe(result)
        self._resolved.append(result)
        self._resolved_ready.set()

    def ahead(self, iid: int, destination: IPAddress) -> Mapping | None:
        """The learned mapping sent ahead of its commit that covers
        ``destination``, if any."""
        return self._ahead.lookup(iid, destination)

    def send_known(self, held: Held, known: Mapping) -> None:
        """A missed packet whose mapping is known but whose flow is being
        installed right now: the packet-out finds it. Unless its bridge
        refused that flow: then the packet is dropped and counted (sent
        round again, it would loop)."""
        refused = self._refused.get((held.datapath_id, known.key))
        if refused is not None and refused == mapping_flow_mod(known, prefix_key(known.iid, known.eid))[0]:
            self._event("misses_refused")
            return
        self._packet_out(held)

    def _install_loop(self) -> None:
        while True:
            self._resolved_ready.wait()
            self._resolved_ready.clear()
            batch, self._resolved = self._resolved, []
            if not batch:
                continue
            try:
                self.install(batch)
            except Exception:
                LOG.exception("installing %d resolved mappings failed", len(batch))

    def install(self, batch: list[Resolution]) -> None:
        """Send the flows of what ``batch`` taught to the bridges now, each
        with its held packets right behind it, and hand the rest to the
        committer (see the module's docstring). The flow-mods are written
        before this returns, so any packet-out sent after (``packet_in``)
        follows them on the connection. Never waits for a commit nor for
        the switch: each part sent waits for its barrier in a greenthread
        of its own, so the next batch is not held up."""
        sessions = self._programmed()
        programmed = {s.status.datapath_id for s in sessions}
        ahead, later = [], []
        for r in batch:
            goes = bool(sessions) and all(self._may_go_ahead(m) for m in r.mappings) and \
                all(h.datapath_id in programmed for h in r.held)
            (ahead if goes else later).append(r)
        part: list[Resolution] = []
        flows: dict[tuple, tuple[int, bytes]] = {}  # mapping key -> (cookie, flow-mod)
        for r in ahead:
            for m in r.mappings:
                pkey = prefix_key(m.iid, m.eid)
                cookie, data = flows[m.key] = mapping_flow_mod(m, pkey)
                self._ahead_flows.pop(self._ahead_cookies.get(pkey), None)  # an earlier answer's
                self._ahead_flows[cookie] = data
                self._ahead_cookies[pkey] = cookie
                self._ahead.add(m)
            part.append(r)
            if len(flows) >= AHEAD_MAX:
                self._send_ahead(flows, sessions, part)
                part, flows = [], {}
        if part:
            self._send_ahead(flows, sessions, part)
        if later:
            self._to_commit += later
            self._commit_ready.set()

    def _commit_loop(self) -> None:
        while True:
            self._commit_ready.wait()
            self._commit_ready.clear()
            try:
                self.commit_pending()
            except Exception:
                LOG.exception("installing resolved mappings failed")

    def commit_pending(self) -> None:
        """Commit every learned mapping handed over since the last time as
        one change, wait for the bridges' barriers, then send on the held
        packets that waited for it (those of mappings sent ahead are out)."""
        batch, self._to_commit = self._to_commit, []
        ahead, self._sent = self._sent, []
        mappings = {m.key: m for m in ahead}
        mappings.update((m.key, m) for r in batch for m in r.mappings)
        if not mappings:
            return
        try:
            results = self.app.apply_change(Change(learn=list(mappings.values())))
        finally:
            # Committed and confirmed (or failed: the bridges' next sync
            # removes their flows); one that came again meanwhile stays.
            for m in ahead:
                if self._ahead.get(m.iid, m.eid) is m:
                    self._ahead.remove(m.iid, m.eid)
                    self._ahead_flows.pop(self._ahead_cookies.pop(prefix_key(m.iid, m.eid), None), None)
        late = [r["bridge"] for r in results if r["status"] not in ("confirmed", "not-connected")]
        if late and batch:
            LOG.warning("learned mappings not confirmed on %s; held packets sent anyway", ", ".join(late))
        if batch:
            self._log_learned({m.key: m for r in batch for m in r.mappings}.values())
        self._release(batch)

    def flows_ahead(self) -> dict[int, bytes]:
        """Learned flows sent to the bridges whose commit is not confirmed
        yet, by cookie: flows the bridges should hold (a copy)."""
        return dict(self._ahead_flows)

    def flow_ahead(self, cookie: int) -> bool:
        """Whether `cookie` is one of `flows_ahead`."""
        return cookie in self._ahead_flows

    def _release(self, batch: list[Resolution]) -> None:
        """Send the held packets of ``batch`` on, once the next hops of their
        RLOCs had time to resolve (see ``probe``)."""
        settle = self._settle_time(batch)
        if settle > 0:
            hub.sleep(settle)
        for datapath_id, packets in _packet_outs_by_bridge(batch).items():
            self._packet_outs(datapath_id, packets)

    def _settle_time(self, batch: list[Resolution]) -> float:
        """Seconds the held packets of ``batch`` should still wait for the
        next-hop probes of their RLOCs to be answered (an ARP exchange; see
        ``probe``); 0 or less: none."""
        return max((self._probed.get((h.datapath_id, address), 0.0)
                    for r in batch for h in r.held for m in r.mappings for address, _ in m.rloc_shares()),
                   default=0.0) + PROBE_SETTLE - time.monotonic()

    def _programmed(self) -> list:
        """The sessions whose bridges this instance writes to (all, or
        those it masters when several share an etcd store)."""
        return [s for s in self.app.sessions.values()
                if s.status.bridge is not None and s.writes and not s.switch.closed]

    def _may_go_ahead(self, m: Mapping) -> bool:
        """A learned mapping whose flow may go to the bridges before its
        commit: it needs no select group (the commit makes those), and no
        config, API, endpoint or registered mapping holds its key."""
        return self.app.state.owner(m.key) in (None, m.source) and not isinstance(rloc_target(m), Group)

    def _send_ahead(self, flows: dict[tuple, tuple[int, bytes]], sessions: list, batch: list[Resolution]) -> None:
        """Send ``flows`` to every session's bridge and the held packets of
        ``batch`` right behind them; a greenthread of its own waits for the
        barriers (``_confirm``). The packets do not wait for the barrier:
        the switch meets them with their flows (see
        Switch.send_flow_mods); only a new RLOC's probe may hold them a
        few milliseconds (``_settle_time``)."""
        packets = _packet_outs_by_bridge(batch)
        settle = self._settle_time(batch)
        keys = list(flows)
        flow_mods = [data for _, data in flows.values()]
        sent = []
        for session in sessions:
            for key in keys:  # refused before, maybe: tried again now (a refusal comes back after this)
                self._refused.pop((session.status.datapath_id, key), None)
            behind = packets.pop(session.status.datapath_id, ()) if settle <= 0 else ()
            try:
                sent.append((session, session.switch.send_flow_mods(
                    flow_mods, behind, refused=functools.partial(self._refused_flow, session, keys, flows))))
            except Exception as e:  # the bridge went away: it gets them when it comes back (the commit)
                LOG.warning("bridge %s: learned flows not sent: %s", session.label, e)
        self._event("learned_ahead", len(flows))
        hub.spawn(self._confirm, flows, sent, batch, packets, settle)

    def _confirm(self, flows: dict[tuple, tuple[int, bytes]], sent: list, batch: list[Resolution],
                 packets: dict[int, list[bytes]], settle: float) -> None:
        """After ``_send_ahead``: the packets that wait for a probe, once it
        had time; then wait for the barriers, tell each bridge's session
        what it holds now, and hand the mappings to the committer."""
        if settle > 0:
            hub.sleep(settle)
        for datapath_id, outs in packets.items():
            self._packet_outs(datapath_id, outs)
        confirmed = bool(sent)
        for session, unconfirmed in sent:
            try:
                unconfirmed.wait()
            except Exception as e:  # the commit sends them again
                confirmed = False
                LOG.warning("bridge %s: learned flows not confirmed: %s", session.label, e)
                continue
            # The bridge holds them now: its sync of their commit need not
            # send them again (the refused ones it tries again).
            datapath_id = session.status.datapath_id
            session.note_installed([cookie for key, (cookie, _) in flows.items()
                                    if self._refused.get((datapath_id, key)) != cookie])
        if confirmed:
            self._log_learned({m.key: m for r in batch for m in r.mappings}.values())
        self._sent += (m for r in batch for m in r.mappings)
        self._commit_ready.set()

    def _refused_flow(self, session, keys: list[tuple], flows: dict[tuple, tuple[int, bytes]],
                      index: int, error) -> None:
        """The switch of ``session`` refused the learned flow of mapping
        ``keys[index]``: remember it, so its packets there are dropped (see
        ``packet_in``). Runs in os-ken's event thread, before the packets
        sent behind the flow can come back."""
        key = keys[index]
        if len(self._refused) >= REFUSED_KEPT:
            self._refused.clear()
        self._refused[(session.status.datapath_id, key)] = flows[key][0]
        self._event("learned_refused")
        LOG.error("bridge %s: switch refused the learned flow for [%d]%s: %s; its packets there are dropped",
                  session.label, key[0], key[1], describe_error(error))

    def _log_learned(self, mappings) -> None:
        mappings = list(mappings)
        LOG.info("learned %d mappings from Map-Replies: %s%s", len(mappings), "; ".join(
            f"[{m.iid}]{m.eid} -> {', '.join(str(r.address) for r in m.rlocs) or 'negative, ' + m.action}"
            f" (TTL {m.ttl} min)" for m in mappings[:5]), " ..." if len(mappings) > 5 else "")

    # -- edges ------------------------------------------------------------------------
    def _packet_out(self, held: Held) -> None:
        self._packet_outs(held.datapath_id, [encode.packet_out_to_table(held.in_port, held.data)])

    def _packet_outs(self, datapath_id: int, packets: list[bytes]) -> None:
        session = self.app.sessions.get(datapath_id)
        if session is None:
            return
        try:
            session.switch.send_many(packets)
        except Exception as e:  # the bridge just went away: the packets are lost, nothing else
            LOG.warning("bridge %s: packet-out of %d resolved packets failed: %s", session.label, len(packets), e)

    def probe(self, result: Resolution) -> None:
        """Make each bridge holding packets for these mappings resolve the
        next hop of their RLOC now (see the module's docstring)."""
        now = time.monotonic()
        if len(self._probed) > 65536:
            self._probed = {k: t for k, t in self._probed.items() if now - t < PROBE_EVERY}
        for datapath_id in {h.datapath_id for h in result.held}:
            session = self.app.sessions.get(datapath_id)
            bridge = session.status.bridge if session is not None else None
            port = session.status.ports.get(bridge.tunnel_port) if bridge is not None else None
            if port is None:
                continue
            for address in {a for m in result.mappings for a, _ in m.rloc_shares()}:  # each RLOC of a set
                if address == bridge.rloc or \
                        now - self._probed.get((datapath_id, address), -PROBE_EVERY) < PROBE_EVERY:
                    continue
                self._probed[(datapath_id, address)] = now
                field = "tun_ipv4_dst" if address.version == 4 else "tun_ipv6_dst"
                try:
                    session.switch.send(encode.packet_out(
                        (set_field(field, address), set_field("tunnel_id", PROBE_IID), output(port)), _PROBE))
                except Exception as e:  # gone: the held packets will not go anywhere either
                    LOG.warning("bridge %s: next-hop probe to %s failed: %s", session.label, address, e)


def _packet_outs_by_bridge(batch: list[Resolution]) -> dict[int, list[bytes]]:
    """The packet-outs of the held packets of ``batch``, by the datapath ID
    of the bridge they came from (each bridge's go in one write)."""
    packets: dict[int, list[bytes]] = {}
    for r in batch:
        for held in r.held:
            packets.setdefault(held.datapath_id, []).append(encode.packet_out_to_table(held.in_port, held.data))
    return packets

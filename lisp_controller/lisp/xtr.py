"""The xTR role at run time: the controller's bridges join a mapping system
(docs/control-plane.rst).

One UDP socket on the control address (port 4342) carries our
Map-Registers and Map-Requests out and the Map-Notifies and Map-Replies
back. Four greenthreads drive the pure logic:

* the receiver decodes every datagram (anything that does not decode, or
  is not for us, is counted and dropped: the listener survives any input)
  and hands Map-Notifies to the registrar, Map-Replies to the resolver;
* the timer runs registrations, retries and refreshes when they are due,
  and registers at once when the endpoints change (`wake`);
* the installer takes what Map-Replies taught, and the committer commits
  all of it that gathered meanwhile as one change (learned mappings: never
  stored, below config, endpoint and API ones), waits for every bridge's
  barrier and only then sends the held packets on with a packet-out, so a
  miss costs no packet.

While a bulk request is being made (it holds the change lock for seconds
and streams its own bundle to the bridges; ``app.big_changes``), a learned
mapping would wait behind all of it. So then its flow goes ahead: the same
flow-mod the state will make (``mapping_flow_mod``), sent on its own to
every bridge this instance programs, outside the bulk's open bundle, the
held packets right behind it on the same connection (a switch takes them
in order), then a barrier to confirm it. The bundle is written paced
(openflow/switch.py), so all of this waits behind at most 128 KB of it.
The learned change is committed when the lock is free (the bridges then
already hold the flow: adding it again changes nothing). Only mappings that
need no select group and whose key nobody else holds go ahead; the others
wait as before. A bulk that brings a mapping for the same key still wins:
its bundle commits after the flow that went ahead, and replaces it.

Open vSwitch drops a packet tunnelled to an RLOC whose underlay next hop it
has not resolved yet (docs/datapath.rst). So when a Map-Reply names an RLOC
the bridge of a held packet has not sent to lately, a probe goes there at
once, before the flows are installed: a packet-out into the tunnel with an
Instance ID nothing uses (the remote ETR drops it) and an IPv4 TTL of 0,
which makes OVS resolve the next hop while the flows are being confirmed.

The controller application calls `packet_in` for each map-cache miss, and
`wake` after a change of endpoints; nothing else of it is touched here
but its public `apply_change`, `state`, `sessions` and `mapping_counters`.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from typing import Callable

from os_ken.lib import hub
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lisp_controller.controller.state import Change
from lisp_controller.lisp.addresses import LispDecodeError
from lisp_controller.lisp.config import XtrSettings
from lisp_controller.lisp.messages import LISP_CONTROL_PORT, MapNotify, MapReply, decode
from lisp_controller.lisp.registrar import Datagram, Registrar
from lisp_controller.lisp.resolver import Held, Resolution, Resolver
from lisp_controller.model import MapCache, Mapping, prefix_key
from lisp_controller.openflow import encode
from lisp_controller.pipeline.actions import output, set_field
from lisp_controller.pipeline.compiler import mapping_flow_mod, rloc_target
from lisp_controller.pipeline.flows import Group
from lisp_controller.lisp.headers import internet_checksum

LOG = logging.getLogger("lisp_controller.xtr")
MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux (socket.h); Python's socket module does not name it
REFRESH_CHECK = 1.0  # seconds between looks at learned entries near their TTL
_ETH_IP, _ETH_IPV6 = 0x0800, 0x86DD
PROBE_IID = 0xFFFFFF  # the Instance ID of next-hop probes: no mapping uses it
PROBE_EVERY = 60.0  # seconds before a (bridge, RLOC) pair is probed again
PROBE_SETTLE = 0.003  # seconds a held packet waits after its RLOC's probe (an ARP exchange)
AHEAD_MAX = 256  # learned mappings sent ahead of a change in progress at once (the rest wait for it)


def probe_frame() -> bytes:
    """What a next-hop probe carries: an IPv4 packet with TTL 0 and no
    payload (protocol 253, for experiments), from and to 0.0.0.0."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 0, 253, 0, bytes(4), bytes(4)))
    ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
    return bytes(12) + struct.pack("!H", _ETH_IP) + bytes(ip)


_PROBE = probe_frame()


def open_control_socket(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                        port: int = LISP_CONTROL_PORT) -> socket.socket:
    """The control-plane socket, bound before anything else listens so a
    wrong address stops the start with a clear message (OSError)."""
    sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    # Room for a burst of replies (a thousand misses resolved at once)
    # while the hub serves something else. Past the system's rmem_max only
    # with CAP_NET_ADMIN (SO_RCVBUFFORCE); otherwise the kernel caps it.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    try:
        sock.bind((str(address), port))
    except OSError:
        sock.close()
        raise
    return sock


def packet_addresses(frame: bytes) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                                            ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """(source, destination) of an untagged Ethernet frame carrying IPv4
    or IPv6 (what the map-cache table sees), or None."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == _ETH_IP and len(frame) >= 34:
        return ipaddress.IPv4Address(frame[26:30]), ipaddress.IPv4Address(frame[30:34])
    if ethertype == _ETH_IPV6 and len(frame) >= 54:
        return ipaddress.IPv6Address(frame[22:38]), ipaddress.IPv6Address(frame[38:54])
    return None


class Xtr:
    def __init__(self, app, settings: XtrSettings, sock: socket.socket,
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.settings = settings
        self.sock = sock
        port = sock.getsockname()[1]
        self.registrar = Registrar(settings, time.time) if settings.registers else None
        self.resolver = Resolver(settings, clock, ttl_clock=app.state.clock, port=port) \
            if settings.resolves else None
        self.counts: dict[str, int] = {}  # datagrams received, by what became of them
        self._wake = hub.Event()
        self._resolved: list[Resolution] = []
        self._resolved_ready = hub.Event()
        # Learned mappings whose flows went ahead of a change in progress,
        # not committed yet (see the module's docstring).
        self._ahead = MapCache()
        self._to_commit: list[Resolution] = []   # resolutions whose packets wait for the commit
        self._commit_ready = hub.Event()
        self._bridges: tuple = ()
        self._probed: dict[tuple, float] = {}  # (datapath ID, RLOC) -> monotonic time of its last probe
        self.threads: list = []

    # -- the application's hooks ------------------------------------------------
    def start(self) -> list:
        LOG.info("LISP control plane on %s:%d: %d map-servers, %d map-resolvers",
                 self.settings.control_address, self.sock.getsockname()[1], len(self.settings.map_servers),
                 len(self.settings.map_resolvers))
        self.threads = [hub.spawn(self._receive_loop), hub.spawn(self._timer_loop),
                        hub.spawn(self._install_loop), hub.spawn(self._commit_loop)]
        return self.threads

    def stop(self) -> None:
        for thread in self.threads:
            hub.kill(thread)
        self.sock.close()

    def wake(self) -> None:
        """The endpoints changed: register (and withdraw) now."""
        self._wake.set()

    def packet_in(self, datapath_id: int, in_port: int, iid: int, frame: bytes) -> None:
        """A packet that missed the map-cache (through the miss meter)."""
        addresses = packet_addresses(frame)
        if addresses is None or self.resolver is None:
            self._count("misses_unparsed" if addresses is None else "misses_unresolved")
            return
        source, destination = addresses
        held = Held(datapath_id, in_port, frame)
        known = self.app.state.cache.lookup(iid, destination) or self._ahead.lookup(iid, destination)
        if known is not None and not (not known.rloc_shares() and known.action == "send-map-request"):
            # Its flow is being installed right now: the packet-out finds it.
            self._packet_out(held)
            return
        self._send(self.resolver.miss(iid, source, destination, held))

    # -- views --------------------------------------------------------------------
    def view(self) -> dict:
        s = self.settings
        out = {
            "control_address": str(s.control_address),
            "map_servers": [{"address": str(m.address), "key_id": m.key.key_id} for m in s.map_servers],
            "map_resolvers": [str(a) for a in s.map_resolvers],
            "register_interval": s.register_interval, "proxy_reply": s.proxy_reply,
            "want_map_notify": s.want_map_notify, "advertise_gpe": s.advertise_gpe,
            "received": dict(self.counts),
        }
        if self.registrar is not None:
            out["registrations"] = [{**r, "registered_at": _iso(r["registered_at"])}
                                    for r in self.registrar.status()]
            out["registrar"] = dict(self.registrar.counts)
        if self.resolver is not None:
            out["resolver"] = {"pending": self.resolver.pending(),
                               "preferred_map_resolver": str(s.map_resolvers[self.resolver.preferred]),
                               **self.resolver.counts}
        return out

    # -- metrics (a prometheus-client collector: read when scraped) -----------------
    def describe(self) -> list:
        return []

    def collect(self):
        registrations = GaugeMetricFamily("lisp_xtr_registrations", "Local EIDs per map-server, by registration "
                                          "state", labels=["map_server", "state"])
        for (server, state), n in (self.registrar.state_counts().items() if self.registrar else ()):
            registrations.add_metric([server, state], n)
        yield registrations
        for name, text, label, counts in (
                ("lisp_control_messages", "LISP control datagrams received, by what became of them",
                 "result", self.counts),
                ("lisp_registrar_events", "Map-Registers sent; Map-Notifies taken, refused or missing",
                 "event", self.registrar.counts if self.registrar else {}),
                ("lisp_resolver_events", "Map-Requests sent, retried, failed over, given up; Map-Replies "
                 "taken or dropped", "event", self.resolver.counts if self.resolver else {})):
            family = CounterMetricFamily(name, text, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            yield family

    # -- greenthreads ---------------------------------------------------------------
    def _receive_loop(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(MAX_DATAGRAM)
            except OSError as e:  # closed (stop), or a transient error: say which
                if self.sock.fileno() < 0:
                    return
                LOG.warning("LISP control socket: %s", e)
                hub.sleep(0.1)
                continue
            try:
                self.receive(data)
            except Exception:  # a bug must not stop the listener; the datagram is dropped
                self._count("errors")
                LOG.exception("LISP control message from %s dropped", peer[0])

    def receive(self, data: bytes) -> str:
        """Take one datagram; what became of it (also counted)."""
        try:
            message = decode(data)
        except LispDecodeError:
            return self._count("malformed")
        if isinstance(message, MapNotify) and self.registrar is not None:
            return self._count("map_notify_" + self.registrar.on_notify(data, message).replace("-", "_"))
        if isinstance(message, MapReply) and self.resolver is not None:
            result = self.resolver.on_reply(message)
            if isinstance(result, str):
                return self._count("map_reply_" + result.replace("-", "_"))
            self._probe(result)
            self._resolved.append(result)
            self._resolved_ready.set()
            return self._count("map_reply_accepted")
        return self._count("ignored")

    def _timer_loop(self) -> None:
        next_refresh = 0.0
        while True:
            try:
                self._tick()
                now = time.monotonic()
                if self.resolver is not None and now >= next_refresh:
                    next_refresh = now + REFRESH_CHECK
                    self._send(self.resolver.refresh_due(self._packets))
            except Exception:
                LOG.exception("LISP control plane timer")
            due = min(self.registrar.next_due() if self.registrar else float("inf"),
                      self.resolver.next_due() if self.resolver else float("inf"),
                      next_refresh if self.resolver else float("inf"))
            self._wake.wait(max(0.0, min(due - time.monotonic(), 1.0)))
            self._wake.clear()

    def _tick(self) -> None:
        if self.registrar is not None:
            bridges = tuple(self.app.state.bridges.values())
            if bridges != self._bridges:
                self._bridges = bridges
                self._send(self.registrar.update(bridges))
            self._send(self.registrar.poll())
        if self.resolver is not None:
            out, failed = self.resolver.poll()
            self._send(out)
            if failed:
                LOG.warning("no Map-Reply from any map-resolver for %s; its packets are dropped",
                            ", ".join(f"[{iid}]{eid}" for iid, eid in failed[:5]))

    def _install_loop(self) -> None:
        while True:
            self._resolved_ready.wait()
            self._resolved_ready.clear()
            batch, self._resolved = self._resolved, []
            if not batch:
                continue
            try:
                self._install(batch)
            except Exception:
                LOG.exception("installing %d resolved mappings failed", len(batch))

    def _install(self, batch: list[Resolution]) -> None:
        """Hand what ``batch`` taught to the committer, sending flows ahead
        first while another change is being made (see the module's
        docstring). Never waits for that change, nor for the switch: the
        flows' barrier waits behind what the change already queued on the
        connection, so each batch sent ahead waits in a greenthread of its
        own and the next one is not held up."""
        if self._busy():
            flows = self._ahead_flows([m for r in batch for m in r.mappings][:AHEAD_MAX])
            sessions = self._programmed()
            if flows and sessions:
                ahead = [r for r in batch if all(m.key in flows for m in r.mappings)]
                batch = [r for r in batch if not all(m.key in flows for m in r.mappings)]
                for r in ahead:
                    for m in r.mappings:
                        self._ahead.add(m)
                hub.spawn(self._send_ahead, flows, sessions, ahead)
        self._to_commit += batch
        self._commit_ready.set()

    def _commit_loop(self) -> None:
        while True:
            self._commit_ready.wait()
            self._commit_ready.clear()
            try:
                self._commit_pending()
            except Exception:
                LOG.exception("installing resolved mappings failed")

    def _commit_pending(self) -> None:
        """Commit every learned mapping handed over since the last time as
        one change, wait for the bridges' barriers, then send on the held
        packets that waited for it (those of mappings sent ahead are out)."""
        batch, self._to_commit = self._to_commit, []
        ahead = list(self._ahead)
        mappings = {m.key: m for m in ahead}
        mappings.update((m.key, m) for r in batch for m in r.mappings)
        if not mappings:
            return
        try:
            results = self.app.apply_change(Change(learn=list(mappings.values())))
        finally:
            for m in ahead:   # committed (or failed: the bridges' next sync removes their flows)
                if self._ahead.get(m.iid, m.eid) is m:
                    self._ahead.remove(m.iid, m.eid)
        late = [r["bridge"] for r in results if r["status"] not in ("confirmed", "not-connected")]
        if late:
            LOG.warning("learned mappings not confirmed on %s; held packets sent anyway", ", ".join(late))
        if batch:
            self._log_learned({m.key: m for r in batch for m in r.mappings}.values(), "")
        self._release(batch)

    def _release(self, batch: list[Resolution]) -> None:
        """Send the held packets of ``batch`` on, once the next hops of their
        RLOCs had time to resolve (see ``_probe``)."""
        settle = max((self._probed.get((h.datapath_id, address), 0.0)
                      for r in batch for h in r.held for m in r.mappings for address, _ in m.rloc_shares()),
                     default=0.0) + PROBE_SETTLE - time.monotonic()
        if settle > 0:
            hub.sleep(settle)
        for r in batch:
            for held in r.held:
                self._packet_out(held)

    def _busy(self) -> bool:
        """A big change is being made or confirmed: a learned mapping
        committed now would wait for all of it."""
        return self.app.big_changes > 0

    def _programmed(self) -> list:
        """The sessions whose bridges this instance writes to (all, or
        those it masters when several share an etcd store)."""
        return [s for s in self.app.sessions.values()
                if s.status.bridge is not None and s.writes and not s.switch.closed]

    def _ahead_flows(self, mappings: list[Mapping]) -> dict:
        """The flow-mods of those ``mappings`` that may go ahead of a change
        in progress (no select group, nobody else's key), by key."""
        state = self.app.state
        return {m.key: mapping_flow_mod(m, prefix_key(m.iid, m.eid))[1] for m in mappings
                if state.owner(m.key) in (None, m.source) and not isinstance(rloc_target(m), Group)}

    def _send_ahead(self, flows: dict, sessions: list, batch: list[Resolution]) -> None:
        """Send ``flows`` to every session's bridge and the held packets of
        ``batch`` right behind them, then confirm the flows by barrier;
        the committer commits their mappings when the change in progress
        is done. A switch takes one connection's messages in order, so a
        packet-out sent after its flow meets it without waiting for the
        barrier (docs/control-plane.rst, "During a big change")."""
        try:
            for session in sessions:
                for data in flows.values():
                    session.switch.send(data)
        except Exception as e:  # a bridge went away: the packets wait for the commit
            LOG.warning("learned flows sent ahead of a change in progress not sent: %s", e)
            self._to_commit += batch
            self._commit_ready.set()
            return
        self._release(batch)
        if self.resolver is not None:
            counts = self.resolver.counts
            counts["learned_ahead"] = counts.get("learned_ahead", 0) + len(flows)
        try:
            for session in sessions:
                session.switch.barrier()
        except Exception as e:  # the commit sends them again
            LOG.warning("learned flows sent ahead of a change in progress not confirmed: %s", e)
        else:
            self._log_learned({m.key: m for r in batch for m in r.mappings}.values(),
                              " ahead of a change in progress")
        self._commit_ready.set()

    def _log_learned(self, mappings, how: str) -> None:
        mappings = list(mappings)
        LOG.info("learned %d mappings from Map-Replies%s: %s%s", len(mappings), how, "; ".join(
            f"[{m.iid}]{m.eid} -> {', '.join(str(r.address) for r in m.rlocs) or 'negative, ' + m.action}"
            f" (TTL {m.ttl} min)" for m in mappings[:5]), " ..." if len(mappings) > 5 else "")

    # -- edges ------------------------------------------------------------------------
    def _send(self, datagrams: list[Datagram]) -> None:
        for d in datagrams:
            try:
                self.sock.sendto(d.data, (str(d.destination), d.port))
            except OSError as e:  # unreachable now: the retry or the next interval sends again
                self._count("send_errors")
                LOG.warning("LISP control message to %s not sent: %s", d.destination, e)

    def _packet_out(self, held: Held) -> None:
        session = self.app.sessions.get(held.datapath_id)
        if session is None:
            return
        try:
            session.switch.send(encode.packet_out_to_table(held.in_port, held.data))
        except Exception as e:  # the bridge just went away: the packet is lost, nothing else
            LOG.warning("bridge %s: packet-out of a resolved packet failed: %s", session.label, e)

    def _probe(self, result: Resolution) -> None:
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

    def _packets(self, key: tuple) -> int | None:
        cookie = self.app.state.mapping_cookie(key)
        if cookie is None:
            return None
        counts = self.app.mapping_counters().counts.get(cookie)
        return counts[0] if counts is not None else None

    def _count(self, name: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return name


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

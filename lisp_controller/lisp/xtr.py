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
* the installer and the committer get what Map-Replies taught onto the
  bridges, with the packets that waited for it (``installer.py``).

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

from lisp_controller.lisp.addresses import LispDecodeError
from lisp_controller.lisp.config import XtrSettings
from lisp_controller.lisp.installer import LearnedInstaller
from lisp_controller.lisp.messages import LISP_CONTROL_PORT, MapNotify, MapReply, decode
from lisp_controller.lisp.registrar import Datagram, Registrar
from lisp_controller.lisp.resolver import Held, Resolver

LOG = logging.getLogger("lisp_controller.xtr")
MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux (socket.h); Python's socket module does not name it
REFRESH_CHECK = 1.0  # seconds between looks at learned entries near their TTL
_ETH_IP, _ETH_IPV6 = 0x0800, 0x86DD


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
        self._bridges: tuple = ()
        self.installer = LearnedInstaller(app, self._event)
        self.threads: list = []

    # -- the application's hooks ------------------------------------------------
    def start(self) -> list:
        LOG.info("LISP control plane on %s:%d: %d map-servers, %d map-resolvers",
                 self.settings.control_address, self.sock.getsockname()[1], len(self.settings.map_servers),
                 len(self.settings.map_resolvers))
        self.threads = [hub.spawn(loop) for loop in (self._receive_loop, self._timer_loop,
                                                      *self.installer.loops())]
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
        known = self.app.state.cache.lookup(iid, destination) or self.installer.ahead(iid, destination)
        if known is not None and not (not known.rloc_shares() and known.action == "send-map-request"):
            self.installer.send_known(held, known)  # its flow is being installed right now
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
            self.installer.resolved(result)
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

    # -- edges ------------------------------------------------------------------------
    def _send(self, datagrams: list[Datagram]) -> None:
        for d in datagrams:
            try:
                self.sock.sendto(d.data, (str(d.destination), d.port))
            except OSError as e:  # unreachable now: the retry or the next interval sends again
                self._count("send_errors")
                LOG.warning("LISP control message to %s not sent: %s", d.destination, e)

    def _packets(self, key: tuple) -> int | None:
        cookie = self.app.state.mapping_cookie(key)
        if cookie is None:
            return None
        counts = self.app.mapping_counters().counts.get(cookie)
        return counts[0] if counts is not None else None

    def _count(self, name: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return name

    def _event(self, name: str, n: int = 1) -> None:
        """Count a resolver event of this module's (GET /v1/lisp ``resolver``)."""
        if self.resolver is not None:
            self.resolver.counts[name] = self.resolver.counts.get(name, 0) + n


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

"""Our OpenFlow accept loop: which connections become datapaths, and when not.

os-ken's own server (the OpenFlowController its OFPHandler starts) keeps
any connection for as long as the peer likes, shares its port with any
other process (SO_REUSEPORT), and hands a datapath to the application as
soon as it names an ID. Here (docs/reliability.rst, "OpenFlow admission"):

- the port is opened before anything starts, without SO_REUSEPORT, so a
  second controller on the same port fails to start;
- TLS (if configured) and the OpenFlow handshake (HELLO, and a
  FEATURES_REPLY whose datapath ID is admitted) must be done within
  `handshake_timeout` seconds, and at most `max_handshakes` connections
  may be at it at once; the others
  are closed, counted (lisp_openflow_connections_closed_total{reason})
  and logged, at most one line per host and reason every QUIET seconds;
- the datapath ID a FEATURES_REPLY names is claimed through `Admission`
  before the datapath reaches MAIN_DISPATCHER, where the application sees it.

An accepted socket is served by os-ken's own `Datapath`, as os-ken's server
would do it; `Handshake` is os-ken's OFPHandler (the handshake messages)
without that server. Nothing of os-ken is replaced process-wide.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from os_ken.base.app_manager import OSKenApp
from os_ken.controller import ofp_event
from os_ken.controller.controller import Datapath
from os_ken.controller.handler import (CONFIG_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER,
                                       set_ev_handler)
from os_ken.controller.ofp_handler import OFPHandler
from os_ken.lib import hub

from lisp_controller.openflow import tls
from lisp_controller.openflow.admission import Admission, LogLimiter

LOG = logging.getLogger("lisp_controller.openflow.listener")
BACKLOG = 1024  # SYNs of a burst of reconnecting bridges wait here, not in retries
QUIET = 10.0  # seconds between log lines about refused connections from one host
# TCP keepalive on every switch connection: idle seconds, interval, probes.
# A peer that vanished (host down, cable cut) is noticed within about a
# minute, also when it was displaced and nothing is sent to it any more.
KEEPALIVE = (30, 10, 3)


def listen(host: str, port: int, backlog: int = BACKLOG):
    """A listening socket on host:port that no other process can share:
    SO_REUSEADDR (a restart may bind while old connections linger in
    TIME_WAIT), never SO_REUSEPORT. OSError if the port is taken."""
    import eventlet

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return eventlet.listen((host, port), family=family, backlog=backlog, reuse_addr=True,
                           reuse_port=False)


@dataclass(eq=False)
class Connection:
    """One accepted OpenFlow connection, from accept to close."""

    address: tuple
    deadline: float  # time.monotonic() by which the handshake must be done
    socket: object = None
    peer: tls.PeerIdentity | None = None  # its certificate, with TLS
    datapath: Datapath | None = None
    datapath_id: int | None = None  # the ID it holds (admission.py)
    claiming: bool = False  # waiting for the ID's holder to answer an echo
    handshaken: bool = False  # its datapath ID admitted: no deadline any more
    closed: bool = False
    reason: str | None = None  # why we closed it (the metric's label)
    timer: object = None  # the hub timer of its deadline
    _probes: dict = field(default_factory=dict)  # echo xid -> event

    @property
    def where(self) -> str:
        """Its address as GET /v1/datapaths shows a bridge's."""
        return "%s:%s" % tuple(self.address[:2])

    def stage(self) -> str:
        """How far its handshake got, for the log."""
        dp = self.datapath
        if dp is None:
            return "TLS handshake not done"
        return "no OpenFlow HELLO" if dp.state == HANDSHAKE_DISPATCHER else "no FEATURES_REPLY"

    def probe(self, timeout: float) -> bool:
        """True if the switch answers an echo within `timeout` seconds."""
        dp = self.datapath
        if self.closed or dp is None:
            return False
        request = dp.ofproto_parser.OFPEchoRequest(dp, data=b"lisp-controller")
        xid = dp.set_xid(request)
        answered = self._probes[xid] = hub.Event()
        try:
            with hub.Timeout(timeout, False):  # a send queue full of a stuck switch's data, too
                if dp.send_msg(request):
                    answered.wait()
            return answered.is_set() and not self.closed
        finally:
            self._probes.pop(xid, None)

    def answered(self, xid: int) -> None:
        event = self._probes.get(xid)
        if event is not None:
            event.set()

    def close(self, reason: str | None = None) -> None:
        """Close it, if not done yet. os-ken's datapath goes to
        DEAD_DISPATCHER (the application hears of it) and its receive loop
        ends at once."""
        if self.closed:
            return
        self.closed = True
        self.reason = self.reason or reason
        for event in list(self._probes.values()):
            event.set()
        if self.datapath is not None:
            self.datapath.close()
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)


class Listener:
    """Accepts switches and sees each through its handshake."""

    def __init__(self, sock, admission: Admission, handshake_timeout: float, max_handshakes: int,
                 tls_context=None):
        self.sock = sock
        self.admission = admission
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.tls = tls_context
        self.connections: dict[Datapath, Connection] = {}
        self.pending: set[Connection] = set()  # still in their handshake
        self.metrics = None  # the application's, once `count_into` has run
        # Set by Handshake: tell the application a datapath is (again) in service.
        self.announce: Callable[[Datapath], None] = lambda dp: None
        self._quiet = LogLimiter(QUIET)

    def count_into(self, metrics) -> None:
        """Count into the application's metrics (api/metrics.py), and show
        how many connections are in their handshake when scraped."""
        metrics.registry.register(_PendingGauge(self))
        self.metrics = metrics

    def serve(self) -> None:
        """Accept forever; each connection gets a greenthread of its own."""
        while True:
            try:
                sock, addr = self.sock.accept()
            except OSError as e:  # out of file descriptors: others will close
                if self._quiet.allow("accept") is not None:
                    LOG.error("OpenFlow: cannot accept a connection: %s", e.strerror or e)
                hub.sleep(0.1)
                continue
            conn = Connection(addr, time.monotonic() + self.handshake_timeout)
            if len(self.pending) >= self.max_handshakes:
                self._note(conn, "handshake-limit", f"{len(self.pending)} connections are already in "
                           "their handshake ([controller] max_handshakes)")
                sock.close()
                self._count("handshake-limit")
                continue
            self.pending.add(conn)
            hub.spawn(self._serve, conn, sock)

    # -- called by Handshake, in the datapath's receive greenthread ------------
    def claim(self, dp: Datapath, dpid: int) -> bool:
        """The datapath named its ID: True if it may go on to be that datapath."""
        conn = self.connections.get(dp)
        if conn is None or conn.closed:
            return False
        if conn.datapath_id is not None or conn.claiming:
            self.close(conn, "malformed", "a second FEATURES_REPLY")
            return False
        conn.claiming, started = True, time.monotonic()
        try:
            refused = self.admission.claim(conn, dpid)
        finally:
            conn.claiming = False
            conn.deadline += time.monotonic() - started  # waiting for another switch is not its fault
        if refused is not None:
            self.close(conn, refused)  # admission.py has said why
            return False
        if conn.closed:
            return False
        conn.handshaken = True
        self.pending.discard(conn)
        _cancel(conn)
        return True

    def echo_reply(self, dp: Datapath, xid: int) -> None:
        conn = self.connections.get(dp)
        if conn is not None:
            conn.answered(xid)

    def close(self, conn: Connection, reason: str, why: str | None = None) -> None:
        """Close `conn` for `reason` (counted when it has ended); `why`, if
        given, is logged (rate-limited)."""
        if conn.closed:
            return
        if why is not None:
            self._note(conn, reason, why)
        conn.close(reason)

    # -- inside ------------------------------------------------------------------
    def _serve(self, conn: Connection, sock) -> None:
        self._arm(conn, self.handshake_timeout)
        try:
            _keepalive(sock)
            if self.tls is not None:
                sock = self._tls(conn, sock)
                if sock is None:
                    return
            conn.socket = sock
            try:
                conn.datapath = dp = Datapath(sock, conn.address)
                self.connections[dp] = conn
                dp.serve()
            except OSError:  # gone before os-ken could set its socket up
                conn.reason = conn.reason or "left"
            except Exception as e:  # os-ken's parser, on bytes that are not OpenFlow
                if not conn.closed:
                    self._note(conn, "malformed", f"cannot parse what it sent ({type(e).__name__}: {e})")
                    conn.reason = "malformed"
        finally:
            self.pending.discard(conn)
            _cancel(conn)
            if not conn.handshaken and conn.reason is None:
                conn.reason = "left"  # went away during its handshake
            conn.close()
            if conn.datapath is not None:
                self.connections.pop(conn.datapath, None)
            if conn.reason is not None:
                self._count(conn.reason)
            adopted = self.admission.gone(conn)
            if adopted is not None and adopted.datapath.state == MAIN_DISPATCHER:
                self.announce(adopted.datapath)  # (otherwise os-ken will, once it gets there)

    def _tls(self, conn: Connection, sock):
        """The TLS handshake, done within the connection's deadline, or None."""
        why = f"TLS handshake not done within {self.handshake_timeout:g} s"
        with hub.Timeout(max(conn.deadline - time.monotonic(), 0.01), False):
            try:
                sock, conn.peer = tls.handshake(self.tls, sock, max(conn.deadline - time.monotonic(), 0.01))
                LOG.info("OpenFlow TLS connection from %s, certificate %s", conn.where, conn.peer or "none")
                return sock
            except tls.TlsError as e:
                why = str(e)
        if self._quiet.allow(("tls", conn.where.rsplit(":", 1)[0])) is not None:
            LOG.warning("OpenFlow TLS handshake from %s refused: %s", conn.where, why)
        conn.reason = "tls-handshake"
        sock.close()
        return None

    def _expire(self, conn: Connection) -> None:
        """The deadline passed: close `conn` unless its handshake is done,
        or it waits for another switch's echo (the deadline moves), or it
        is in its TLS handshake (which has the same deadline)."""
        if conn.handshaken or conn.closed:
            return
        wait = conn.deadline - time.monotonic()
        if conn.claiming or conn.datapath is None or wait > 0:
            self._arm(conn, max(wait, 0.1))
            return
        self.close(conn, "handshake-timeout",
                   f"no OpenFlow handshake within {self.handshake_timeout:g} s ({conn.stage()})")

    def _arm(self, conn: Connection, delay: float) -> None:
        """A bare hub timer, cancelled once the handshake is done: no
        greenthread waits for the deadline of each connection."""
        from eventlet import hubs

        conn.timer = hubs.get_hub().schedule_call_global(delay, hub.spawn, self._expire, conn)

    def _note(self, conn: Connection, reason: str, why: str) -> None:
        held = self._quiet.allow((reason, conn.where.rsplit(":", 1)[0]))
        if held is not None:
            more = f" ({held} more from this host since the last such line)" if held else ""
            LOG.warning("OpenFlow connection from %s closed: %s%s", conn.where, why, more)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("lisp_openflow_connections_closed_total", reason=reason)


class _PendingGauge:
    """lisp_openflow_handshakes_pending, read when /metrics is scraped."""

    def __init__(self, listener: Listener):
        self.listener = listener

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("lisp_openflow_handshakes_pending", "OpenFlow connections still in their "
                                "handshake", value=len(self.listener.pending))


def _cancel(conn: Connection) -> None:
    if conn.timer is not None:
        conn.timer.cancel()
        conn.timer = None


def _keepalive(sock) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class Handshake(OFPHandler):
    """os-ken's OpenFlow handshake (HELLO, FEATURES, port description,
    echo) without its server: connections come from our `Listener`, which
    decides on each datapath ID claim before the datapath reaches
    MAIN_DISPATCHER. Registered under os-ken's name for it ("ofp_event"),
    so os-ken's Datapath finds it as usual."""

    def __init__(self, *args, lisp_listener: Listener | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if lisp_listener is None:
            raise ValueError("Handshake needs lisp_listener")
        self.listener = lisp_listener
        lisp_listener.announce = self._announce

    def start(self):
        """Only the event loop: our listener accepts, not OpenFlowController."""
        return OSKenApp.start(self)

    @set_ev_handler(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        if self.listener.claim(ev.msg.datapath, ev.msg.datapath_id):
            super().switch_features_handler(ev)

    @set_ev_handler(ofp_event.EventOFPPortDescStatsReply, CONFIG_DISPATCHER)
    def multipart_reply_handler(self, ev):
        conn = self.listener.connections.get(ev.msg.datapath)
        if conn is not None and conn.handshaken and not conn.closed:  # not before its ID is admitted
            super().multipart_reply_handler(ev)

    @set_ev_handler(ofp_event.EventOFPEchoReply, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def echo_reply_handler(self, ev):
        super().echo_reply_handler(ev)
        self.listener.echo_reply(ev.msg.datapath, ev.msg.xid)

    def _announce(self, dp: Datapath) -> None:
        """A displaced session is adopted again: the application hears of
        it as of any datapath entering MAIN_DISPATCHER."""
        ev = ofp_event.EventOFPStateChange(dp)
        ev.state = MAIN_DISPATCHER
        self.send_event_to_observers(ev, MAIN_DISPATCHER)

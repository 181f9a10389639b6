"""The os-ken application: OpenFlow events in, the pure layers called.

One `BridgeSession` per connected bridge runs in its own greenthread: read
the port description, read back our flows, then loop: compile, diff, send
the difference as one bundle, wait for the next change. os-ken's event
thread only routes replies and marks sessions dirty; it never blocks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from .compiler import compile_bridge, compile_map_cache
from .config import Config
from .flows import render
from .model import Bridge
from .reconcile import applied, reconcile
from .switch import Switch, SwitchError, describe_error

LOG = logging.getLogger("lisp_controller")
MAX_ERRORS_KEPT = 50


@dataclass
class BridgeStatus:
    """What the API and logs say about one bridge."""

    datapath_id: int
    address: str
    name: str | None = None
    bridge: Bridge | None = None
    connected_since: float = field(default_factory=time.time)
    ports: dict[str, int] = field(default_factory=dict)
    flows_desired: int = 0
    flows_installed: int = 0
    missing_ports: tuple[str, ...] = ()
    last_reconcile: float | None = None
    last_reconcile_ms: float | None = None
    flow_mods_sent: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.errors)


class BridgeSession:
    def __init__(self, app: "LispControllerApp", datapath):
        self.app = app
        self.switch = Switch(datapath)
        self.status = BridgeStatus(datapath.id, "%s:%s" % tuple(datapath.address[:2]))
        self.installed: dict[int, int] = {}
        self.dirty = hub.Event()
        self.thread = None

    @property
    def label(self) -> str:
        s = self.status
        name = f" ({s.name})" if s.name else ""
        if s.bridge is not None and s.bridge.label not in (s.name, f"{s.datapath_id:016x}"):
            return f"{s.bridge.label} [{s.datapath_id:016x}{name}]"
        return f"{s.datapath_id:016x}{name}"

    def start(self) -> None:
        self.thread = hub.spawn(self._run)

    def stop(self) -> None:
        self.switch.close()
        if self.thread is not None and self.thread is not hub.getcurrent():
            hub.kill(self.thread)
        self.thread = None

    def mark_dirty(self) -> None:
        self.dirty.set()

    def port_status(self, msg) -> None:
        port = msg.desc
        name = port.name.decode(errors="replace") if isinstance(port.name, bytes) else port.name
        ports = self.status.ports
        if msg.reason == ofp.OFPPR_DELETE:
            if ports.get(name) == port.port_no:
                del ports[name]
            LOG.info("bridge %s: port %s (%d) deleted", self.label, name, port.port_no)
        elif port.port_no <= ofp.OFPP_MAX:
            old = ports.get(name)
            ports[name] = port.port_no
            if old != port.port_no:
                LOG.info("bridge %s: port %s is now %d (was %s)", self.label, name, port.port_no, old)
        self.mark_dirty()

    def _run(self) -> None:
        st = self.status
        try:
            ports, st.name = self.switch.port_desc()
            st.ports.clear()
            st.ports.update(ports)
            self.switch.label = self.label
            bridge = self.app.bridge_for(st.datapath_id, st.name)
            if bridge is None:
                return
            st.bridge = bridge
            self.switch.label = self.label
            started = time.monotonic()
            self.installed = self.switch.installed_cookies()
            LOG.info("bridge %s: connected from %s, %d ports, %d flows of ours installed "
                     "(read in %.0f ms)", self.label, st.address, len(st.ports),
                     sum(self.installed.values()), (time.monotonic() - started) * 1000)
            while True:
                self.dirty.clear()
                self.sync()
                self.dirty.wait()
        except SwitchError as e:
            if not self.switch.closed:
                LOG.error("%s", e)
                self._record_error(str(e))
        except Exception:  # a bug must not kill os-ken's hub; say where it happened
            LOG.exception("bridge %s: session failed", self.label)

    def sync(self) -> None:
        """Make the bridge hold exactly the desired flows."""
        st = self.status
        started = time.monotonic()
        compiled = compile_bridge(st.bridge, st.ports, self.app.config.overlay, self.app.shared_flows)
        if compiled.missing_ports != st.missing_ports and compiled.missing_ports:
            LOG.warning("bridge %s: configured ports not on the bridge: %s (their flows are left out)",
                        self.label, ", ".join(compiled.missing_ports))
        st.missing_ports = compiled.missing_ports
        st.flows_desired = len(compiled.flows)
        plan = reconcile(compiled.flows, self.installed)
        if plan:
            result = self.switch.apply(plan)
            self.installed = applied(self.installed, plan, set(result.failed))
            st.flow_mods_sent += result.sent
            for cookie, text in result.failed.items():
                self._record_error(f"flow rejected: {render(compiled.flows[cookie])}: {text}")
            LOG.info("bridge %s: %d flows removed, %d added%s in %.0f ms, confirmed by barrier",
                     self.label, len(plan.delete), len(plan.add) - len(result.failed),
                     f", {len(result.failed)} rejected" if result.failed else "",
                     (time.monotonic() - started) * 1000)
        else:
            LOG.info("bridge %s: all %d flows already correct, nothing sent", self.label,
                     st.flows_desired)
        st.flows_installed = sum(self.installed.values())
        st.last_reconcile = time.time()
        st.last_reconcile_ms = (time.monotonic() - started) * 1000

    def _record_error(self, text: str) -> None:
        errors = self.status.errors
        errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}")
        del errors[:-MAX_ERRORS_KEPT]


class LispControllerApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, lisp_config: Config | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if lisp_config is None:
            raise ValueError("LispControllerApp needs lisp_config")
        self.config = lisp_config
        self.shared_flows = compile_map_cache(lisp_config.overlay.map_cache(),
                                              lisp_config.overlay.miss_action)
        self.sessions: dict[int, BridgeSession] = {}

    def bridge_for(self, datapath_id: int, name: str | None) -> Bridge | None:
        """The configured bridge this datapath is, or None (logged)."""
        label = f"{datapath_id:016x}" + (f" ({name})" if name else "")
        for bridge in self.config.overlay.bridges:
            if not bridge.matches(datapath_id, name):
                continue
            if bridge.datapath_id is None:
                for other in self.sessions.values():
                    if other.status.bridge is bridge and other.status.datapath_id != datapath_id:
                        LOG.error("bridge %s: name %r is already connected as datapath %016x; "
                                  "two bridges with one name must be configured by datapath_id. "
                                  "Left alone.", label, name, other.status.datapath_id)
                        return None
            return bridge
        LOG.warning("bridge %s: connected but not in the config %s; left alone",
                    label, self.config.source)
        return None

    def _session(self, msg) -> BridgeSession | None:
        session = self.sessions.get(msg.datapath.id)
        if session is None or session.switch.dp is not msg.datapath:
            return None
        return session

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            old = self.sessions.pop(dp.id, None)
            if old is not None:
                old.stop()
            session = self.sessions[dp.id] = BridgeSession(self, dp)
            session.start()
        elif ev.state == DEAD_DISPATCHER and dp.id is not None:
            session = self.sessions.get(dp.id)
            if session is not None and session.switch.dp is dp:
                LOG.info("bridge %s: disconnected", session.label)
                session.stop()
                del self.sessions[dp.id]

    @set_ev_cls([ofp_event.EventOFPPortDescStatsReply, ofp_event.EventOFPFlowStatsReply,
                 ofp_event.EventOFPBarrierReply, ofp_event.EventONFBundleCtrlMsg],
                MAIN_DISPATCHER)
    def _reply(self, ev) -> None:
        session = self._session(ev.msg)
        if session is not None:
            session.switch.on_reply(ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev) -> None:
        session = self._session(ev.msg)
        if session is not None and session.switch.on_error(ev.msg):
            return
        label = session.label if session else f"{ev.msg.datapath.id:016x}"
        LOG.error("bridge %s: OpenFlow error %s for xid %#x", label, describe_error(ev.msg), ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        session = self._session(ev.msg)
        if session is not None:
            session.port_status(ev.msg)

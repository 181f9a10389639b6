"""The os-ken application: OpenFlow events in, the pure layers called.

One supervised `BridgeSession` (session.py) per connected bridge runs in
its own greenthread. os-ken's event thread only routes replies and marks
sessions dirty; it never blocks. `apply_change` is the one way the desired
state changes: check, store, apply, then wait for the bridges to confirm,
and on a shared store for the other controllers' bridges (applied.py).
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.pipeline.compiler import T_MAPCACHE, T_TOO_BIG, compile_local
from lisp_controller.config import Config
from lisp_controller.controller.bridgestatus import datapath_view
from lisp_controller.controller.flowlist import FlowList
from lisp_controller.controller.slices import let_go, ms_since
from lisp_controller.controller.counters import CounterCache, Snapshot, add_bucket_counts
from lisp_controller.controller.gcpause import BIG, breathe, gc_paused
from lisp_controller.api.metrics import Metrics
from lisp_controller.controller import procinfo
from lisp_controller.controller.session import BridgeSession, SyncHook
from lisp_controller.controller.streaming import ABORT, open_feed, streamable
from lisp_controller.model import Bridge
from lisp_controller.controller.state import Change, Conflict, State
from lisp_controller.errors import NotFound
from lisp_controller.controller.admit import admit, describe_dropped
from lisp_controller.controller.applied import Applied, Confirmations
from lisp_controller.store import Delta, Store, StoreError, StoreStale
from lisp_controller.openflow.errors import SwitchError, describe_error
from lisp_controller.openflow.flowstats import FlowCounts
from lisp_controller.controller.toobig import PathMtu
from lisp_controller.controller.offhub import BIG_ITEMS
from lisp_controller.lisp.xtr import Xtr

LOG = logging.getLogger("lisp_controller")
EXPIRY_INTERVAL = 1.0  # seconds between TTL checks
STALE_RETRIES = 3  # a shared store: times a change is checked again after another controller's
STATS_TIMEOUT = 10.0  # seconds a bridge may take to send its map-cache counters


class LispControllerApp(app_manager.OSKenApp):
    """Owns the desired state and the bridge sessions; the API calls
    `apply_change` to change the state and learns per bridge what happened."""

    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, lisp_config: Config | None = None, lisp_state: State | None = None,
                 lisp_store: Store | None = None, lisp_before_sync: SyncHook | None = None,
                 lisp_admission=None, lisp_control_socket=None, lisp_membership=None, **kwargs):
        super().__init__(*args, **kwargs)
        if lisp_config is None:
            raise ValueError("LispControllerApp needs lisp_config")
        self.config = lisp_config
        self.state = lisp_state or State(lisp_config)
        self.store = lisp_store
        self.before_sync: SyncHook = lisp_before_sync or _nothing
        # Which connection may be which datapath (openflow/admission.py):
        # a refused claim never reaches this app, only its conflicts list.
        self.admission = lisp_admission
        self.sessions: dict[int, BridgeSession] = {}
        # With an etcd store: this instance among the others, and the
        # bridges etcd gives it to master (store/membership.py). None: the
        # only controller, EQUAL on every bridge, as without roles.
        self.membership = lisp_membership
        # Per bridge label, the missing ports last logged: a condition is
        # logged when it starts and ends, across reconnects (session.py).
        self.missing_ports_said: dict[str, tuple[str, ...]] = {}
        self.store_error: str | None = None  # the last write's failure, until a write succeeds
        self.change_lock = hub.Semaphore(1)
        # A shared store: which of its changes this controller's bridges
        # hold, said to the other controllers when it grows (applied.py).
        self.applied = Applied()
        self.applied_wake = hub.Event()
        # Set when a bridge confirms a generation: wakes wait_confirmed (and the publisher).
        self.confirmed = Confirmations(hub.Event(), self.applied_wake)
        self.metrics = Metrics(self)
        if self.membership is not None:
            self.membership.on_roles = self._on_roles
        self.counters = CounterCache(self._read_counters, hub.spawn, pause=lambda: hub.sleep(0))
        self.pathmtu = PathMtu(self.counters.get)
        self.mapping_system = None  # lisp/service.py's MappingSystem, when [lisp] listen is set
        self.threads.append(hub.spawn(self._expire_loop))
        if self.store is not None and self.store.seq is not None:
            self.applied.note(self.store.seq, self.state.generation)  # what it loaded
            self.threads.append(hub.spawn(self._publish_applied))
        # The xTR role (lisp/xtr.py): registration and resolution, given
        # the control socket __main__ bound for it.
        self.xtr = Xtr(self, lisp_config.xtr, lisp_control_socket) if lisp_control_socket is not None else None
        if self.xtr is not None:
            self.metrics.registry.register(self.xtr)  # its counts, read when scraped
            self.threads += self.xtr.start()

    # -- changes -----------------------------------------------------------
    def apply_change(self, change: Change, wait: float | None = None, timings: dict | None = None,
                     instances: list | None = None) -> list[dict]:
        """The controller's change: check, store, apply, then wait
        (bounded) for every connected bridge to confirm by barrier (an
        OpenFlow bundle's commit is openflow/switch.py's `commit`, one step
        of each bridge's part). Raises Conflict or StoreError before
        anything changed. `timings`, if given, receives milliseconds per
        stage. On a shared store another controller may commit first: this
        one catches up and checks the change again; and the wait includes
        the other controllers' bridges, whose answers `instances`, if
        given, receives (store.base, `wait_applied`; docs/etcd.rst)."""
        for attempt in range(STALE_RETRIES):
            try:
                return self._apply_change_once(change, wait, timings, instances)
            except StoreStale as e:
                if attempt == STALE_RETRIES - 1 or not self.store.catch_up(self.config.api.confirm_timeout):
                    raise
                LOG.info("%s; checking the change again", e)
        raise AssertionError("unreachable")

    def apply_stored(self, delta: Delta) -> None:
        """A change another controller committed to the shared store, handed
        over by the store's watch holding change_lock: applied like a
        change without the check (its writer checked it against the same
        changes) and without writing it back. The config still wins."""
        change, dropped, dropped_endpoints = admit(self.state, delta)
        for line in describe_dropped(dropped, dropped_endpoints, self.state):
            LOG.warning("change from the store: %s; left out here (the config wins)", line)
        with gc_paused(_size(change)):  # lifted while it yields
            self.state.apply(change, pause=_pause)
        if delta.seq is not None:
            self.applied.note(delta.seq, self.state.generation)
            self.applied_wake.set()
        for session in list(self.sessions.values()):
            session.mark_dirty()

    def _apply_change_once(self, change: Change, wait: float | None, timings: dict | None,
                           instances: list | None) -> list[dict]:
        t = {} if timings is None else timings
        started = time.monotonic()
        big_change = _size(change) >= BIG_ITEMS
        seq = None  # the change's number in a shared store
        with self.change_lock:
            # Python work, on the hub in slices, not on a native thread
            # (offhub.py); the change lock keeps the state as it is.
            self.state.check(change, pause=_pause if big_change else None)
            t["check_ms"] = ms_since(started)
            if self.store is not None and change.stored:
                mark = time.monotonic()
                try:
                    self.store.write(change.put, change.delete, change.replace_api, change.put_endpoints,
                                     change.delete_endpoints, change.request, big=big_change)
                except StoreStale:  # not a failure of the store: apply_change() catches up
                    raise
                except StoreError as e:  # nothing applied: memory and bridges stay as stored
                    self.store_error = str(e)
                    self.metrics.inc("lisp_store_errors_total")
                    raise
                self.store_error = None
                seq = self.store.seq
                t["store_ms"] = ms_since(mark)
            mark = time.monotonic()
            big = len(change.put) + len(change.delete) + len(change.learn) >= BIG or change.replace_api
            # Bridges that hold the current state take a big change while
            # it is being made; the others catch up after. A stream carries
            # map-cache flows only, so endpoint changes take the usual path.
            streams = big and not change.put_endpoints and not change.delete_endpoints
            fed = [s for s in self._programmed() if streamable(s)] if streams else []
            feeds = [open_feed(s) for s in fed]
            try:
                with gc_paused(_size(change)):  # lifted while it yields
                    self.state.apply(change, pause=_pause,
                                     stream=functools.partial(_put_all, feeds) if feeds else None)
            except BaseException:
                _put_all(feeds, ABORT)
                raise
            target = self.state.generation
            _put_all(feeds, ("end", target))
            if seq is not None:
                self.applied.note(seq, target)
                self.applied_wake.set()
            t["state_ms"] = ms_since(mark)  # compile and encode map-cache flows (and stream them)
            if self.xtr is not None and (change.put_endpoints or change.delete_endpoints):
                self.xtr.wake()  # register or withdraw now
            for session in list(self.sessions.values()):
                if session not in fed:
                    session.mark_dirty()
        mark = time.monotonic()
        timeout = self.config.api.confirm_timeout if wait is None else wait
        results = self.wait_confirmed(target, timeout)
        t["bridges_ms"] = ms_since(mark)
        self.metrics.observe_barrier_wait(time.monotonic() - mark)
        if seq is not None:
            others = self.store.wait_applied(seq, max(0.0, timeout - (time.monotonic() - mark)))
            t["instances_ms"] = ms_since(mark)
            late = [f"{o['instance']} ({o['status']}, holds change {o['applied']})" for o in others
                    if o["status"] != "confirmed"]
            if late and timeout > 0:
                LOG.warning("change %d: not confirmed by every controller's bridges within %g s: %s",
                            seq, timeout, ", ".join(late))
            if instances is not None:
                instances.extend(others)
        return results

    def flows_ahead(self) -> dict[int, bytes]:
        """Learned flows the xTR sent to the bridges ahead of their commit,
        by cookie (lisp/installer.py): a sync counts them as wanted."""
        return self.xtr.installer.flows_ahead() if self.xtr is not None else {}

    def flow_ahead(self, cookie: int) -> bool:
        """Whether `cookie` is one of `flows_ahead`."""
        return self.xtr is not None and self.xtr.installer.flow_ahead(cookie)

    def _publish_applied(self) -> None:
        """Tell the other controllers (through the store) each time the
        bridges here hold a later change: every bridge connected has
        confirmed its generation (none connected: at once)."""
        while True:
            self.applied_wake.wait()
            self.applied_wake.clear()
            synced = [s.status.synced_generation for s in self._programmed()]
            seq = self.applied.reached(min(synced, default=self.state.generation))
            if seq is not None:
                self.store.applied(seq)

    def wait_confirmed(self, generation: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            pending = [s for s in self._programmed() if s.status.synced_generation < generation]
            if not pending or time.monotonic() >= deadline:
                break
            # Woken by a confirmation; the timeout covers one that another
            # waiter's clear() took (several commits may wait at once).
            self.confirmed.clear()
            self.confirmed.wait(0.002)
        results = []
        connected = {s.status.bridge.label: s for s in self._attached()}
        for bridge in self.state.bridges.values():
            s = connected.get(bridge.label)
            if s is None:
                status = "not-connected"
            elif not s.writes:
                status = "other-master"  # another instance programs it (docs/etcd.rst)
            elif s.status.synced_generation < generation:
                status = "timeout"
            elif s.status.last_rejected:
                status = "rejected"
            else:
                status = "confirmed"
            entry = {"bridge": bridge.label, "status": status}
            if status == "other-master":
                entry["master"] = self.membership.master_of(s.status.datapath_id)
            if s is not None and s.status.last_stages:
                entry["stages_ms"] = dict(s.status.last_stages)
            if status == "rejected":
                entry["errors"] = s.status.errors[-s.status.last_rejected:]
            results.append(entry)
        return results

    def _attached(self) -> list[BridgeSession]:
        """Sessions of configured bridges, whoever masters them."""
        return [s for s in self.sessions.values() if s.status.bridge is not None]

    def _programmed(self) -> list[BridgeSession]:
        """The sessions this instance writes to: all, or those it masters."""
        return [s for s in self._attached() if s.writes]

    def _on_roles(self, held: dict[int, int]) -> None:
        """The membership's word: this instance masters `held` (datapath ->
        generation ID) and nothing else. Called from its thread."""
        for dpid, session in list(self.sessions.items()):
            if session.status.bridge is not None:
                session.set_master(held.get(dpid))

    def _expire_loop(self) -> None:
        while True:
            hub.sleep(EXPIRY_INTERVAL)
            try:
                change = self.state.expired()
                keys = change.delete + change.forget
                if keys:
                    LOG.info("%d mappings reached their TTL: %s", len(keys),
                             ", ".join(f"{iid}:{eid}" for iid, eid in keys[:10]))
                    self.apply_change(change, wait=0)
            except StoreError as e:  # retried next time; the mappings stay until then
                LOG.error("TTL expiry postponed: %s", e)
            except (Conflict, NotFound) as e:  # a shared store: another controller expired them first
                LOG.info("TTL expiry: %s (already done by another controller)", e)
            except Exception:  # keep expiring later; say what went wrong now
                LOG.exception("TTL expiry failed")

    # -- views for the API ---------------------------------------------------
    def resources(self) -> dict:
        """What the process holds, for leak checks. Walks every object."""
        greenthreads, objects = procinfo.objects()
        return {"resident_bytes": procinfo.resident_bytes(), "open_fds": procinfo.open_fds(),
                "greenthreads": greenthreads, "objects": objects, "hub_timers": procinfo.hub_timers(),
                "sessions": len(self.sessions)}

    def datapaths(self) -> list[dict]:
        """Every configured bridge, connected or not, then any connected
        datapath the config does not know."""
        by_label = {s.status.bridge.label: s.status for s in self._attached()}
        out = [{**datapath_view(b, by_label.get(b.label), self.membership), **self.pathmtu.view(b)}
               for b in self.state.bridges.values()]
        out += [datapath_view(None, s.status, self.membership) for s in self.sessions.values()
                if s.status.bridge is None]
        return out

    def instances(self) -> dict:
        """The controller instances alive and how many bridges each masters
        (docs/etcd.rst); alone, this one masters every bridge connected."""
        if self.membership is None:
            attached = self._attached()
            return {"shared": False, "instance": None, "lease_problem": None, "instances": [
                {"instance": None, "self": True, "masters": len(attached),
                 "connected": sorted(f"{s.status.datapath_id:016x}" for s in attached)}]}
        return {"shared": True, "instance": self.membership.me, "lease_problem": self.membership.lease_problem(),
                "instances": self.membership.instances()}

    def conflicts(self) -> list[dict]:
        """Datapath ID claims refused or sessions displaced, lately."""
        return self.admission.conflicts() if self.admission is not None else []

    def mapping_counters(self) -> Snapshot:
        """Packets and bytes per map-cache cookie, summed over the connected
        bridges, at most a few seconds old (see counters.py)."""
        return self.counters.get()

    def _read_counters(self) -> Snapshot:
        flows, buckets = FlowCounts(), {}
        for session in self._attached():
            try:
                session.switch.flow_counters(T_MAPCACHE, STATS_TIMEOUT, into=flows)
                add_bucket_counts(buckets, session.switch.group_counters(STATS_TIMEOUT))
                self.pathmtu.read(session.switch, session.status.bridge.label, STATS_TIMEOUT)
            except SwitchError as e:  # gone or slow: its share is missing (or partial) this time
                LOG.warning("%s", e)
        return Snapshot(flows, buckets=buckets)

    def bridge_flows(self, label: str, pause: Callable[[], None]) -> FlowList:
        """The flows the bridge should hold now (what it holds, once
        synced), to be listed letting the hub go (controller/flowlist.py)."""
        session = next((s for s in self._attached() if s.status.bridge.label == label), None)
        ports = session.status.ports if session is not None else {}
        shared = self.state.shared
        with self.change_lock:  # the snapshot lets the hub go: no change may come in between
            own = compile_local(self.state.bridge(label), ports, shared).flows
            cookies, sources = shared.snapshot(pause)
            groups = dict(shared.groups)  # few: one per RLOC set in use
        listed = FlowList(own, cookies, sources, groups, pause)  # made and rendered with the lock free
        let_go(cookies, pause)  # a million references each: tens of ms let go of at once
        let_go(sources, pause)
        return listed

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
            if self.membership is not None:
                session.set_master(self.membership.held.get(dp.id))
            session.start()
        elif ev.state == DEAD_DISPATCHER and dp.id is not None:
            session = self.sessions.get(dp.id)
            if session is not None and session.switch.dp is dp:
                LOG.info("bridge %s: disconnected", session.label)
                session.stop()
                del self.sessions[dp.id]
                if self.membership is not None and session.status.bridge is not None:
                    self.membership.disconnected(dp.id)

    @set_ev_cls([ofp_event.EventOFPPortDescStatsReply, ofp_event.EventOFPFlowStatsReply,
                 ofp_event.EventOFPBarrierReply, ofp_event.EventONFBundleCtrlMsg,
                 ofp_event.EventOFPMeterConfigStatsReply, ofp_event.EventOFPMeterStatsReply,
                 ofp_event.EventOFPGroupDescStatsReply, ofp_event.EventOFPGroupStatsReply,
                 ofp_event.EventOFPRoleReply],
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
        self.metrics.inc("lisp_openflow_errors_total")
        LOG.error("bridge %s: OpenFlow error %s for xid %#x", label, describe_error(ev.msg), ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        """Packets too big for the tunnel are answered (toobig.py); the
        rest are map-cache misses (send-map-request, through the miss
        meter): counted, and resolved by the xTR role when it is configured."""
        if ev.msg.table_id == T_TOO_BIG:
            session = self._session(ev.msg)
            if session is None or session.status.bridge is None:
                return
            try:
                self.pathmtu.packet_in(session.switch, self.state.bridge(session.status.bridge.label),
                                       session.status.ports, ev.msg, session.label)
            except Exception:  # one bad packet must not stop the next; say which bridge
                LOG.exception("bridge %s: answering a packet too big for the tunnel failed", session.label)
            return
        self.metrics.inc("lisp_map_cache_misses_total")
        msg = ev.msg
        if self.xtr is not None and self._session(msg) is not None:
            self.xtr.packet_in(msg.datapath.id, msg.match["in_port"], msg.match.get("metadata", 0), msg.data)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        session = self._session(ev.msg)
        if session is not None:
            session.port_status(ev.msg)


def _put_all(feeds: list, item: object) -> None:
    for feed in feeds:
        feed.put(item)


def _pause() -> None:
    """A big change lets the hub run now and then, the collector too."""
    breathe(_yield)


def _yield() -> None:
    hub.sleep(0)


def _nothing(label: str) -> None:
    pass


def _size(change: Change) -> int:
    """Mappings a change puts, learns and deletes."""
    return len(change.put) + len(change.delete) + len(change.learn) + len(change.forget)

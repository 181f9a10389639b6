"""The os-ken application: OpenFlow events in, the pure layers called.

One `BridgeSession` per connected bridge runs in its own greenthread: read
the port description, read back our flows, then loop: compile, diff, send
the difference as one bundle, wait for the next change. os-ken's event
thread only routes replies and marks sessions dirty; it never blocks.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable
from dataclasses import dataclass, field

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.pipeline.compiler import T_MAPCACHE, T_TOO_BIG, Compiled, compile_bridge, compile_local
from lisp_controller.config import Config
from lisp_controller.controller.counters import Counts, CounterCache, Snapshot, add_counts
from lisp_controller.openflow.encode import encode_delete
from lisp_controller.pipeline.flows import Flow, flow_mods, render
from lisp_controller.controller.gcpause import BIG, freeze_long_lived
from lisp_controller.api.metrics import Metrics
from lisp_controller.controller import procinfo
from lisp_controller.model import Bridge
from lisp_controller.openflow import verify
from lisp_controller.controller.reconcile import Stream, catch_up, reconcile, record
from lisp_controller.controller.state import Change, Conflict, State
from lisp_controller.controller.admit import admit, describe_dropped
from lisp_controller.store import Delta, Store, StoreError, StoreStale
from lisp_controller.openflow.switch import Switch, SwitchError, describe_error, port_name
from lisp_controller.controller.toobig import PathMtu

LOG = logging.getLogger("lisp_controller")
MAX_ERRORS_KEPT = 50
EXPIRY_INTERVAL = 1.0  # seconds between TTL checks
STALE_RETRIES = 3  # a shared store: times a change is checked again after another controller's
STATS_TIMEOUT = 10.0  # seconds a bridge may take to send its map-cache counters


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
    synced_generation: int = -1  # state generation the bridge last confirmed
    verified_ms: float | None = None  # from connection to the first full sync
    last_stages: dict = field(default_factory=dict)  # milliseconds of the last sync's stages
    last_rejected: int = 0  # flows the switch refused in that sync
    last_verify: float | None = None  # the last deep check (whole flows compared)
    last_verify_ms: float | None = None  # its duration: the dump and the comparison
    flows_repaired: int = 0  # flows found changed by hand and replaced, since connecting
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
        # What the last sync planned against: if neither the bridge's config
        # nor its ports changed since, the next one can send just the delta.
        self._synced_bridge: Bridge | None = None
        self._synced_ports: dict[str, int] = {}
        self._local_flows = 0
        self.dirty = hub.Event()
        self.idle = False  # waiting for work, with nothing half sent
        # A big change being made right now, batch by batch (see `stream`).
        self.feed: hub.Queue | None = None
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
        name = port_name(port)
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
        connected = time.monotonic()
        try:
            ports, st.name = self.switch.port_desc()
            st.ports.clear()
            st.ports.update(ports)
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
            self.dirty.clear()
            self.sync()
            st.verified_ms = _ms_since(connected)
            interval = self.app.config.reconcile_interval
            next_check = time.monotonic() + interval
            while True:
                # Changes wake the session at once; without any, it wakes
                # for the periodic deep check.
                self.idle = True
                self.dirty.wait(max(0.0, next_check - time.monotonic()) if interval else None)
                self.idle = False
                self.dirty.clear()
                feed, self.feed = self.feed, None
                if feed is not None:
                    self._take_stream(feed)
                    continue
                deep = bool(interval) and time.monotonic() >= next_check
                self.sync(deep=deep)
                if deep:
                    next_check = time.monotonic() + interval
        except SwitchError as e:
            if not self.switch.closed:
                LOG.error("%s", e)
                self._record_error(str(e))
        except Exception:  # a bug must not kill os-ken's hub; say where it happened
            LOG.exception("bridge %s: session failed", self.label)

    def sync(self, deep: bool = False) -> None:
        """Make the bridge hold exactly the desired flows. `deep` first
        reads back every flow of ours, whole, instead of trusting what the
        last sync left: flows added, deleted or edited by others since
        then are repaired."""
        st = self.status
        state = self.app.state
        started = time.monotonic()
        # Plan under the commit lock: a big change applied to the state
        # yields to the hub midway, and a bridge must never see half of it.
        with self.app.commit_lock:
            generation = state.generation
            bridge = state.bridge(st.bridge.label)
            # The ports this plan is for: port events may change st.ports
            # while the plan is being sent, and the next sync must see that.
            ports = dict(st.ports)
            delta = None
            if not deep and bridge is self._synced_bridge and ports == self._synced_ports \
                    and not bridge.proxy_arp:
                # Only shared flows changed since the last sync: send those
                # (proxy ARP answers depend on every mapping: full path).
                delta = state.shared_delta(st.synced_generation)
            if delta is None:
                compiled = compile_local(bridge, ports, state.shared)
                local = flow_mods(compiled.flows)
                # A deep check compares against a copy: it reads the switch
                # outside the lock, and the state may move meanwhile.
                expected = {**state.encoded, **local} if deep else None
                plan = None if deep else reconcile(self.installed, state.encoded, local)
                self._local_flows = len(local)
            else:
                plan = catch_up(self.installed, delta[0], delta[1], state.encoded)
        stages = {"plan_ms": _ms_since(started)}
        if delta is None:
            if compiled.missing_ports != st.missing_ports and compiled.missing_ports:
                LOG.warning("bridge %s: configured ports not on the bridge: %s (their flows are left out)",
                            self.label, ", ".join(compiled.missing_ports))
            st.missing_ports = compiled.missing_ports
            if deep:  # compare whole flows first; the diff then repairs what differs
                mark = time.monotonic()
                self._deep_check(compiled, expected)
                plan = reconcile(self.installed, expected)
                stages["verify_ms"] = _ms_since(mark)
            st.flows_installed = sum(self.installed.values())
        st.flows_desired = self._local_flows + len(state.shared)
        if delta is None and (deep or bridge is not self._synced_bridge):
            error = self.app.pathmtu.sync_meters(self.switch, bridge, self.label)  # before the flows
            if error:
                self._record_error(error)
        rejected = 0
        if plan:
            mark = time.monotonic()
            flow_of = self._flow_namer(compiled.flows if delta is None else {})
            result = self.switch.apply(plan, name_of=flow_of)
            stages["switch_ms"] = _ms_since(mark)  # encode what is new, bundle, commit, barrier
            if not result.committed:  # the switch holds what it held; the periodic check retries
                text = f"change not applied: the bundle was refused {result.attempts} times"
                LOG.error("bridge %s: %s", self.label, text)
                self._record_error(text)
                self._synced_bridge = None  # the next sync is a full one
                return
            st.flow_mods_sent += result.sent
            self.app.metrics.inc("lisp_flow_mods_sent_total", result.sent)
            st.flows_installed += record(self.installed, plan, set(result.failed))
            rejected = len(result.failed)
            if result.failed:
                adds = {c for c, _ in plan.add}  # once: a full table may reject thousands
                for cookie, text in result.failed.items():
                    self.app.metrics.inc("lisp_openflow_errors_total")
                    what = flow_of(cookie) if cookie in adds else f"delete cookie={cookie:#x}"
                    self._record_error(f"flow rejected: {what}: {text}")
            LOG.info("bridge %s: %d flows removed, %d added%s in %.0f ms, confirmed by barrier",
                     self.label, len(plan.delete), len(plan.add) - len(result.failed),
                     f", {len(result.failed)} rejected" if result.failed else "",
                     (time.monotonic() - started) * 1000)
        elif delta is None:
            LOG.info("bridge %s: all %d flows already correct, nothing sent", self.label,
                     st.flows_desired)
        self._synced_bridge, self._synced_ports = bridge, ports
        st.last_reconcile = time.time()
        st.last_reconcile_ms = (time.monotonic() - started) * 1000
        st.synced_generation = generation
        st.last_rejected = rejected
        st.last_stages = stages
        self.app.metrics.observe_sync(st.bridge.label, st.last_reconcile_ms / 1000)

    def streamable(self) -> bool:
        """True if this bridge can take the change about to be made as a
        stream: it is idle and holds exactly the current state, so the
        change's own flow edits are all it needs (called under the commit
        lock, before the change)."""
        st, state = self.status, self.app.state
        bridge = state.bridge(st.bridge.label) if st.bridge is not None else None
        return (self.idle and not self.dirty.is_set() and self.feed is None and not self.switch.closed
                and bridge is not None and bridge is self._synced_bridge and not bridge.proxy_arp
                and st.ports == self._synced_ports and st.synced_generation == state.generation)

    def stream(self) -> "hub.Queue":
        """Open a feed for the change about to be made: the state puts its
        flow edits in batches as it makes them, then END (or ABORT)."""
        self.feed = hub.Queue()
        self.mark_dirty()
        return self.feed

    def _take_stream(self, feed: "hub.Queue") -> None:
        """Send a big change into an open bundle while the state is still
        making it: the switch parses one batch while the controller makes
        the next (two cores), and commits once all of it is in."""
        st = self.status
        started = time.monotonic()
        stream = Stream(self.installed)
        bundle = self.switch.open_bundle()  # anonymous: the cheapest messages
        try:
            while True:
                batch = feed.get()
                if batch is ABORT:
                    bundle.discard()
                    self._synced_bridge = None  # the next sync is a full one
                    self.mark_dirty()
                    return
                if isinstance(batch, tuple):  # END
                    generation = batch[1]
                    break
                bundle.add_many(((c, data if data is not None else encode_delete(c))
                                 for c, data in stream.step(batch)), batch=True)
            mark = time.monotonic()
            ok, errors = bundle.commit()
        finally:
            bundle.close()
        if not ok or errors:
            # Something was refused (the anonymous bundle cannot say what):
            # read the bridge back and send what differs, named, so the
            # refused flows are found, reported and left out.
            LOG.warning("bridge %s: the switch refused part of the streamed change; "
                        "checking the bridge and sending it again as a whole", self.label)
            self.sync(deep=True)
            return
        sent = bundle.count
        stream.record()
        st.flows_installed = sum(self.installed.values())
        st.flows_desired = self._local_flows + len(self.app.state.shared)
        st.flow_mods_sent += sent
        self.app.metrics.inc("lisp_flow_mods_sent_total", sent)
        st.last_stages = {"stream_ms": _ms_since(started), "commit_ms": _ms_since(mark),
                          "send_wait_ms": round(bundle.waited * 1000, 1)}
        st.last_reconcile = time.time()
        st.last_reconcile_ms = _ms_since(started)
        st.last_rejected = 0
        st.synced_generation = generation
        LOG.info("bridge %s: %d flow-mods streamed while the change was made, committed in %.0f ms, "
                 "confirmed by barrier", self.label, sent, st.last_stages["commit_ms"])
        self.app.metrics.observe_sync(st.bridge.label, st.last_reconcile_ms / 1000)

    def _flow_namer(self, local: dict[int, Flow]) -> Callable[[int], str]:
        """A cookie's flow in ovs-ofctl syntax, for logs and errors."""
        shared = self.app.state.shared

        def name(cookie: int) -> str:
            flow = local.get(cookie) or shared.get(cookie)
            return render(flow) if flow is not None else f"cookie={cookie:#x}"
        return name

    def _deep_check(self, compiled: Compiled, expected: dict[int, bytes]) -> None:
        """Read every flow of ours and count one whose content differs
        from its cookie's flow twice, so reconcile replaces it."""
        started = time.monotonic()
        entries = self.switch.flow_entries()
        verdict = verify.installed_counts(_paced(entries), expected)
        self.installed = verdict.counts
        self.status.last_verify = time.time()
        self.status.last_verify_ms = _ms_since(started)
        if verdict.changed:
            self.status.flows_repaired += len(verdict.changed)
            self.app.metrics.inc("lisp_flows_repaired_total", len(verdict.changed))
            name = self._flow_namer(compiled.flows)
            LOG.warning("bridge %s: %d flows of ours were changed on the switch (by hand?); "
                        "replacing them with: %s", self.label, len(verdict.changed),
                        "; ".join(name(c) for c in verdict.changed[:5]))
        unwanted = sum(1 for c in self.installed if c not in expected)
        missing = sum(1 for c in expected if c not in self.installed)
        if verdict.duplicates or unwanted or missing:
            LOG.warning("bridge %s: deep check found %d duplicate, %d unwanted and %d missing "
                        "flows under our cookie; repairing", self.label, verdict.duplicates,
                        unwanted, missing)

    def _record_error(self, text: str) -> None:
        errors = self.status.errors
        errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}")
        del errors[:-MAX_ERRORS_KEPT]


class LispControllerApp(app_manager.OSKenApp):
    """Owns the desired state and the bridge sessions; the API calls
    `commit` to change the state and learns per bridge what happened."""

    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, lisp_config: Config | None = None, lisp_state: State | None = None,
                 lisp_store: Store | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if lisp_config is None:
            raise ValueError("LispControllerApp needs lisp_config")
        self.config = lisp_config
        self.state = lisp_state or State(lisp_config)
        self.store = lisp_store
        self.sessions: dict[int, BridgeSession] = {}
        self.store_error: str | None = None  # the last write's failure, until a write succeeds
        self.commit_lock = hub.Semaphore(1)
        self.metrics = Metrics(self)
        freeze_long_lived()  # the state loaded from config and store
        self.counters = CounterCache(self._read_counters, hub.spawn)
        self.pathmtu = PathMtu(self.counters.get)
        self.threads.append(hub.spawn(self._expire_loop))

    # -- changes -----------------------------------------------------------
    def commit(self, change: Change, wait: float | None = None, timings: dict | None = None) -> list[dict]:
        """Check, store, apply, then wait (bounded) for every connected
        bridge to confirm by barrier. Raises Conflict or StoreError before
        anything changed. `timings`, if given, receives milliseconds per
        stage. On a shared store another controller may commit first: this
        one catches up and checks the change again (docs/etcd.rst)."""
        for attempt in range(STALE_RETRIES):
            try:
                return self._commit_once(change, wait, timings)
            except StoreStale as e:
                if attempt == STALE_RETRIES - 1 or not self.store.catch_up(self.config.api.confirm_timeout):
                    raise
                LOG.info("%s; checking the change again", e)
        raise AssertionError("unreachable")

    def apply_stored(self, delta: Delta) -> None:
        """A change another controller committed to the shared store, handed
        over by the store's watch holding commit_lock: applied like a
        commit without the check (its writer checked it against the same
        changes) and without writing it back. The config still wins."""
        change, dropped, dropped_endpoints = admit(self.state, delta)
        for line in describe_dropped(dropped, dropped_endpoints, self.state):
            LOG.warning("change from the store: %s; left out here (the config wins)", line)
        self.state.apply(change, pause=_pause)
        if len(change.put) + len(change.delete) >= BIG or change.replace_api:
            freeze_long_lived()
        for session in list(self.sessions.values()):
            session.mark_dirty()

    def _commit_once(self, change: Change, wait: float | None, timings: dict | None) -> list[dict]:
        t = {} if timings is None else timings
        started = time.monotonic()
        with self.commit_lock:
            self.state.check(change)
            t["check_ms"] = _ms_since(started)
            if self.store is not None and change.stored:
                mark = time.monotonic()
                try:
                    self.store.write(change.put, change.delete, change.replace_api,
                                     change.put_endpoints, change.delete_endpoints, change.request)
                except StoreStale:  # not a failure of the store: commit() catches up
                    raise
                except StoreError as e:  # nothing applied: memory and bridges stay as stored
                    self.store_error = str(e)
                    self.metrics.inc("lisp_store_errors_total")
                    raise
                self.store_error = None
                t["store_ms"] = _ms_since(mark)
            mark = time.monotonic()
            big = len(change.put) + len(change.delete) + len(change.learn) >= BIG or change.replace_api
            # Bridges that hold the current state take a big change while
            # it is being made; the others catch up after. A stream carries
            # map-cache flows only, so endpoint changes take the usual path.
            streams = big and not change.put_endpoints and not change.delete_endpoints
            fed = [s for s in self._programmed() if s.streamable()] if streams else []
            feeds = [s.stream() for s in fed]
            try:
                self.state.apply(change, pause=_pause,
                                 stream=functools.partial(_put_all, feeds) if feeds else None)
            except BaseException:
                _put_all(feeds, ABORT)
                raise
            target = self.state.generation
            _put_all(feeds, ("end", target))
            t["state_ms"] = _ms_since(mark)  # compile and encode map-cache flows (and stream them)
            if big:
                freeze_long_lived()
            for session in list(self.sessions.values()):
                if session not in fed:
                    session.mark_dirty()
        mark = time.monotonic()
        results = self.wait_confirmed(target, self.config.api.confirm_timeout if wait is None else wait)
        t["bridges_ms"] = _ms_since(mark)
        self.metrics.observe_barrier_wait(time.monotonic() - mark)
        return results

    def wait_confirmed(self, generation: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            pending = [s for s in self._programmed() if s.status.synced_generation < generation]
            if not pending or time.monotonic() >= deadline:
                break
            hub.sleep(0.002)
        results = []
        connected = {s.status.bridge.label: s for s in self._programmed()}
        for bridge in self.state.bridges.values():
            s = connected.get(bridge.label)
            if s is None:
                status = "not-connected"
            elif s.status.synced_generation < generation:
                status = "timeout"
            elif s.status.last_rejected:
                status = "rejected"
            else:
                status = "confirmed"
            entry = {"bridge": bridge.label, "status": status}
            if s is not None and s.status.last_stages:
                entry["stages_ms"] = dict(s.status.last_stages)
            if status == "rejected":
                entry["errors"] = s.status.errors[-s.status.last_rejected:]
            results.append(entry)
        return results

    def _programmed(self) -> list[BridgeSession]:
        return [s for s in self.sessions.values() if s.status.bridge is not None]

    def _expire_loop(self) -> None:
        while True:
            hub.sleep(EXPIRY_INTERVAL)
            try:
                change = self.state.expired()
                keys = change.delete + change.forget
                if keys:
                    LOG.info("%d mappings reached their TTL: %s", len(keys),
                             ", ".join(f"{iid}:{eid}" for iid, eid in keys[:10]))
                    self.commit(change, wait=0)
            except StoreError as e:  # retried next time; the mappings stay until then
                LOG.error("TTL expiry postponed: %s", e)
            except Conflict as e:  # a shared store: another controller expired them first
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
        by_label = {s.status.bridge.label: s for s in self._programmed()}
        out = [{**_datapath_view(b, by_label.get(b.label)), **self.pathmtu.view(b)}
               for b in self.state.bridges.values()]
        out += [_datapath_view(None, s) for s in self.sessions.values() if s.status.bridge is None]
        return out

    def mapping_counters(self) -> Snapshot:
        """Packets and bytes per map-cache cookie, summed over the connected
        bridges, at most a few seconds old (see counters.py)."""
        return self.counters.get()

    def _read_counters(self) -> Counts:
        total: Counts = {}
        for session in self._programmed():
            try:
                add_counts(total, session.switch.flow_counters(T_MAPCACHE, STATS_TIMEOUT))
                self.pathmtu.read(session.switch, session.status.bridge.label, STATS_TIMEOUT)
            except SwitchError as e:  # gone or slow: its share is missing this time
                LOG.warning("%s", e)
        return total

    def bridge_flows(self, label: str) -> list:
        """The flows the bridge should hold now (what it holds, once synced)."""
        session = next((s for s in self._programmed() if s.status.bridge.label == label), None)
        ports = session.status.ports if session is not None else {}
        return list(compile_bridge(self.state.bridge(label), ports, self.state.shared).flows.values())

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
                 ofp_event.EventOFPBarrierReply, ofp_event.EventONFBundleCtrlMsg,
                 ofp_event.EventOFPMeterConfigStatsReply, ofp_event.EventOFPMeterStatsReply],
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
        rest are map-cache misses with send-map-request, counted until a
        LISP control plane exists to ask."""
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

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        session = self._session(ev.msg)
        if session is not None:
            session.port_status(ev.msg)


ABORT = object()  # a streamed change failed midway: discard the bundle


def _put_all(feeds: list, item: object) -> None:
    for feed in feeds:
        feed.put(item)


def _paced(items, every: int = 2048):
    """Yield `items`, letting the hub run every `every` of them (echo
    replies must not wait for a long comparison)."""
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            hub.sleep(0)


def _ms_since(mark: float) -> float:
    return round((time.monotonic() - mark) * 1000, 1)


def _pause() -> None:
    hub.sleep(0)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _datapath_view(bridge: Bridge | None, session: BridgeSession | None) -> dict:
    st = session.status if session is not None else None
    dpid = bridge.datapath_id if bridge is not None and bridge.datapath_id is not None else \
        (st.datapath_id if st is not None else None)
    return {
        "bridge": bridge.label if bridge is not None else f"{st.datapath_id:016x}",
        "configured": bridge is not None,
        "datapath_id": f"{dpid:016x}" if dpid is not None else None,
        "name": (st.name if st is not None else None) or (bridge.name if bridge is not None else None),
        "connected": st is not None,
        "connected_since": _iso(st.connected_since) if st else None,
        "address": st.address if st else None,
        "rloc": str(bridge.rloc) if bridge else None,
        "tunnel_profile": bridge.profile if bridge else None,
        "tunnel_port": bridge.tunnel_port if bridge else None,
        "ports": dict(sorted(st.ports.items(), key=lambda kv: kv[1])) if st else {},
        "missing_ports": list(st.missing_ports) if st else [],
        "flows_desired": st.flows_desired if st else None,
        "flows_installed": st.flows_installed if st else None,
        "flow_mods_sent": st.flow_mods_sent if st else 0,
        "last_reconcile": _iso(st.last_reconcile) if st else None,
        "last_reconcile_ms": round(st.last_reconcile_ms, 1) if st and st.last_reconcile_ms is not None else None,
        "verified_ms": st.verified_ms if st else None,
        "last_verify": _iso(st.last_verify) if st else None,
        "last_verify_ms": st.last_verify_ms if st else None,
        "flows_repaired": st.flows_repaired if st else 0,
        "flows_rejected": st.last_rejected if st else 0,
        "errors": list(st.errors) if st else [],
        "degraded": bool(st and st.errors),
    }

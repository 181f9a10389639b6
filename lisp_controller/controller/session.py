"""One bridge's session: its connection's greenthread, supervised.

A session reads the bridge (ports, our flows and groups), syncs it, then loops:
wait for a change or the periodic deep check, compile, diff, send the
difference as one bundle. Everything a bridge is sent goes through this
one greenthread, so a deep check never sees a sync half done
(docs/reliability.rst); except the flows the xTR learned and sent ahead of
their commit (lisp/installer.py), which a sync counts as wanted (`flows_ahead`).
The deep check is controller/deepcheck.py; a big change streamed in as it
is made, controller/streaming.py; what the session shows of the bridge,
controller/bridgestatus.py.

Supervision: whatever fails (the switch refuses or does not answer, or a
bug) is logged with the bridge's label, shown as degraded in
`/v1/datapaths` and counted in `lisp_session_failures_total`; while the
connection lives, the session starts over after a pause that doubles from
0.5 s to 30 s and comes back to 0.5 s after a good sync. Starting over
reads the bridge again: what a failed sync left there is not known.

With an etcd store, every instance holds the bridge and one masters it:
the session then runs under its BridgeRole (controller/roles.py), which
holds the bridge as SLAVE and hands the session the bridge to serve while
etcd and the switch make this instance its master.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.controller.deepcheck import deep_check, deep_check_groups, expected_flows, flow_namer, parts_slices
from lisp_controller.controller.reconcile import catch_up, group_plan, let_go_plan, reconcile, record, record_groups
from lisp_controller.controller.bridgestatus import BridgeStatus, and_groups, groups_text, report_missing_ports
from lisp_controller.controller.roles import MASTER, BridgeRole
from lisp_controller.controller.slices import Slices, let_go, ms_since
from lisp_controller.controller.streaming import take_stream
from lisp_controller.model import Bridge
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.switch import Switch, port_name
from lisp_controller.pipeline.compiler import compile_local
from lisp_controller.pipeline.flows import Group, flow_mods

if TYPE_CHECKING:
    from lisp_controller.controller.app import LispControllerApp

LOG = logging.getLogger("lisp_controller")
MAX_ERRORS_KEPT = 50
FIRST_RETRY = 0.5  # seconds before a failed session starts over
LAST_RETRY = 30.0  # the longest pause between attempts

# Called with the bridge's label before each sync; may raise. Lets a test
# make syncs fail (lab/serve.py); the default does nothing.
SyncHook = Callable[[str], None]


class Backoff:
    """Pauses between attempts: `first`, doubling up to `limit`."""

    def __init__(self, first: float = FIRST_RETRY, limit: float = LAST_RETRY):
        self.first, self.limit = first, limit
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.limit, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


class BridgeSession:
    def __init__(self, app: "LispControllerApp", datapath, switch: Switch | None = None,
                 sleep: Callable[[float], None] = hub.sleep):
        self.app = app
        # Bundle writes are paced only where misses are resolved: there a
        # learned flow must not wait behind a whole bulk, elsewhere pacing
        # would only slow the bulk (docs/performance.rst).
        self.switch = switch or Switch(datapath, pace_bundles=app.config.xtr.resolves)
        self.status = BridgeStatus(datapath.id, "%s:%s" % tuple(datapath.address[:2]))
        self.installed: dict[int, int] = {}
        self.installed_groups: dict[int, Group | None] = {}  # our groups on the bridge, by ID
        # What the last sync planned against: if neither the bridge's config
        # nor its ports changed since, the next one can send just the delta.
        self.synced_bridge: Bridge | None = None
        self.synced_ports: dict[str, int] = {}
        self.local_flows = 0
        # Flows others confirmed on the bridge since the last sync (the
        # xTR's learned flows sent ahead of their commit: note_installed).
        self._noted: list[int] = []
        self.dirty = hub.Event()
        self.idle = False  # waiting for work, with nothing half sent
        # A big change being made right now, batch by batch (see `stream`).
        self.feed: hub.Queue | None = None
        self.thread = None
        self.backoff = Backoff()
        self._sleep = sleep
        # Long work of a sync (the deep check, a full diff) lets the hub go
        # between slices (controller/slices.py); a test gives its own
        # pause and a clock that stands still.
        self.pause: Callable[[], None] = lambda: hub.sleep(0)
        self.slice_clock: Callable[[], float] = time.perf_counter
        self._traced = False  # a traceback was logged since the last good sync
        # With an etcd store, etcd decides who is master (app.membership)
        # and the switch must agree (controller/roles.py); None: the only
        # controller, EQUAL, always writes.
        membership = getattr(app, "membership", None)
        self.role = None if membership is None else BridgeRole(
            membership, app.metrics, self.switch, self.status, self.dirty, lambda: self.label, self._record_error)

    @property
    def label(self) -> str:
        s = self.status
        name = f" ({s.name})" if s.name else ""
        if s.bridge is not None and s.bridge.label not in (s.name, f"{s.datapath_id:016x}"):
            return f"{s.bridge.label} [{s.datapath_id:016x}{name}]"
        return f"{s.datapath_id:016x}{name}"

    def start(self) -> None:
        self.thread = hub.spawn(self.run)

    def stop(self) -> None:
        self.switch.close()
        self.dirty.set()  # a session waiting for work sees the connection gone
        if self.thread is not None and self.thread is not hub.getcurrent():
            hub.kill(self.thread)
        self.thread = None

    def mark_dirty(self) -> None:
        self.dirty.set()

    def note_installed(self, cookies: list[int]) -> None:
        """The bridge confirmed these flows, which the xTR sent it ahead of
        their commit (lisp/installer.py): the next sync counts them as installed,
        so the commit's sync does not send them again. Only this session's
        greenthread changes `installed`; it takes them in then."""
        self._noted += cookies

    def take_noted(self) -> None:
        """Count the flows noted since the last sync as installed, those
        still wanted (a newer answer or an API mapping for the same prefix
        may have replaced one on the bridge since). Nothing this session
        sent meanwhile removed them: a sync keeps the flows sent ahead."""
        if not self._noted:
            return
        noted, self._noted = self._noted, []
        wanted, ahead, installed = self.app.state.encoded, self.app.flow_ahead, self.installed
        taken = 0
        for cookie in noted:
            if cookie not in installed and (cookie in wanted or ahead(cookie)):
                installed[cookie] = 1
                taken += 1
        self.status.flows_installed += taken

    @property
    def writes(self) -> bool:
        """This instance programs the bridge: the only controller, or its master."""
        return self.role is None or self.status.role == MASTER

    def set_master(self, generation: int | None) -> None:
        """etcd gave this instance the bridge with `generation` (None: took
        it away); see BridgeRole.set_master."""
        self.role.set_master(generation)

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

    # -- the supervised loop ---------------------------------------------------
    def run(self) -> None:
        """Serve the bridge until the connection goes; start over after
        any failure while it lives."""
        connected = time.monotonic()
        while not self.switch.closed:
            try:
                if not self._attach():
                    return  # not a bridge of ours: left alone
                if self.role is not None:
                    self.role.follow(lambda generation: self._take_over(connected, generation), self._forget)
                else:
                    self._serve(connected)
            except Exception as e:  # noqa: BLE001 - any failure: log, mark, start over
                if self.switch.closed:
                    return  # the connection went: the app has seen or will see it go
                self._failed(e)

    def _attach(self) -> bool:
        """Read the port description and find the configured bridge (on
        the first attempt), then read what the bridge holds of ours."""
        st = self.status
        ports, name = self.switch.port_desc()
        st.ports.clear()
        st.ports.update(ports)
        if st.bridge is None:
            st.name = name
            st.bridge = self.app.bridge_for(st.datapath_id, st.name)
            if st.bridge is None:
                return False
            self.switch.label = self.label
            if self.role is not None:
                self.app.membership.connected(st.datapath_id)
        self._read_bridge("connected from " + st.address if st.failing is None else "starting over")
        return True

    def _read_bridge(self, why: str) -> None:
        """What the bridge holds of ours, read whole: the base of the next
        (full) sync."""
        st = self.status
        started = time.monotonic()
        before, self.installed = self.installed, self.switch.installed_cookies()
        let_go(before, self.pause, self.slice_clock)  # after starting over: a million, in parts
        self.installed_groups = self.switch.groups()
        self.synced_bridge = None  # the first sync of an attempt is a full one
        st.flows_installed, st.groups_installed = sum(self.installed.values()), len(self.installed_groups)
        LOG.info("bridge %s: %s, %d ports, %d flows%s of ours installed (read in %.0f ms)", self.label,
                 why, len(st.ports), sum(self.installed.values()), and_groups(len(self.installed_groups)),
                 (time.monotonic() - started) * 1000)

    # -- as master (an etcd store) ----------------------------------------------------
    def _take_over(self, connected: float, generation: int) -> None:
        """The switch took this instance as master: read the bridge again
        (another master wrote to it) and serve it, first with a deep check,
        until deposed (controller/roles.py)."""
        self._read_bridge(f"master now (generation {generation}): read to take it over")
        self._serve(connected, deep=True)

    def _forget(self) -> None:
        """Deposed: a full sync if the bridge comes back; a change being
        streamed is dropped (its producer never blocks: the queue is
        unbounded)."""
        self.synced_bridge = None
        self.feed = None

    def assert_master(self) -> None:
        """Before a write: still master (BridgeRole.assert_master; no round trip)."""
        if self.role is not None:
            self.role.assert_master()

    def _serve(self, connected: float, deep: bool = False) -> None:
        """Sync, then keep the bridge in sync. `deep`: the first sync
        compares whole flows (a bridge taken over from another master)."""
        st = self.status
        self.dirty.clear()
        self.sync(deep=deep, first=True)
        if st.verified_ms is None:
            st.verified_ms = ms_since(connected)
        interval = self.app.config.reconcile_interval
        next_check = time.monotonic() + interval
        while True:
            # Changes wake the session at once; without any, it wakes
            # for the periodic deep check.
            self.idle = True
            self.dirty.wait(max(0.0, next_check - time.monotonic()) if interval else None)
            self.idle = False
            if self.switch.closed:
                return
            self.dirty.clear()
            if self.role is not None:
                self.role.check_wanted()
            feed, self.feed = self.feed, None
            if feed is not None:
                take_stream(self, feed)
                continue
            deep = bool(interval) and time.monotonic() >= next_check
            self.sync(deep=deep)
            if deep:
                next_check = time.monotonic() + interval

    def _failed(self, error: Exception) -> None:
        """Log, count and show the failure, then wait before starting over."""
        st = self.status
        delay = self.backoff.next()
        text = str(error).removeprefix(f"bridge {self.label}: ")
        if not isinstance(error, SwitchError):
            text = f"{type(error).__name__}: {text}"
        st.failing = text
        st.session_failures += 1
        self.idle = False
        self.feed = None
        self._record_error(f"sync failed: {text}; starting over in {delay:g} s")
        self.app.metrics.inc("lisp_session_failures_total",
                             bridge=st.bridge.label if st.bridge is not None else self.label)
        if not isinstance(error, SwitchError) and not self._traced:  # a bug: where it happened, once
            self._traced = True
            LOG.exception("bridge %s: sync failed: %s; starting over in %.1f s (failure %d)",
                          self.label, text, delay, st.session_failures)
        else:
            LOG.error("bridge %s: sync failed: %s; starting over in %.1f s (failure %d)",
                      self.label, text, delay, st.session_failures)
        self._sleep(delay)

    def synced(self) -> None:
        """A sync went through: the session is healthy again, and commits
        waiting for this generation wake now."""
        self.app.confirmed.set()
        st = self.status
        if st.failing is not None:
            LOG.info("bridge %s: in sync again on the same connection, after %d failed attempts",
                     self.label, st.session_failures)
            st.failing = None
        self.backoff.reset()
        self._traced = False

    # -- syncs -----------------------------------------------------------------
    def sync(self, deep: bool = False, first: bool = False) -> None:
        """Make the bridge hold exactly the desired flows. `deep` first
        reads back every flow of ours, whole, instead of trusting what the
        last sync left: flows added, deleted or edited by others since
        then are repaired. `first`: the first sync of an attempt."""
        st = self.status
        state = self.app.state
        started = time.monotonic()
        # Plan under the change lock: a big change applied to the state
        # yields to the hub midway, and a bridge must never see half of it.
        with self.app.change_lock:
            # A test's hook sees the state this sync will plan from: not
            # one a change being stored meanwhile is about to replace.
            self.app.before_sync(self.label)
            self.take_noted()
            generation = state.generation
            bridge = state.bridge(st.bridge.label)
            # The ports this plan is for: port events may change st.ports
            # while the plan is being sent, and the next sync must see that.
            ports = dict(st.ports)
            delta = None
            if not deep and bridge is self.synced_bridge and ports == self.synced_ports \
                    and not bridge.proxy_arp:
                # Only shared flows changed since the last sync: send those
                # (proxy ARP answers depend on every mapping: full path).
                delta = state.shared_delta(st.synced_generation, self.slices())
            if delta is None:
                compiled = compile_local(bridge, ports, state.shared)
                local = flow_mods(compiled.flows)
                # A deep check compares against a copy, made a part at a
                # time (controller/deepcheck.py).
                expected = expected_flows(state.encoded, local, parts_slices(self)) if deep else None
                # Under the lock nobody changes the state, and only this
                # greenthread changes `installed`: the diff may yield.
                # Learned flows the xTR sent ahead of their commit are wanted
                # too (lisp/installer.py): a full sync must not remove them.
                plan = None if deep else reconcile(self.installed, state.encoded, local, self.app.flows_ahead(),
                                                   slices=self.slices())
                self.local_flows = len(local)
            else:
                plan = catch_up(self.installed, delta[0], delta[1], state.encoded, self.slices())
            groups = dict(state.shared.groups)  # few: one per RLOC set in use
            if plan is not None:
                plan = plan.with_groups(group_plan(self.installed_groups, groups))
        stages = {"plan_ms": ms_since(started)}
        if delta is None:
            report_missing_ports(st, compiled.missing_ports, self.app.missing_ports_said, self.label)
            if deep:  # compare whole flows first; the diff then repairs what differs
                mark = time.monotonic()
                ahead = deep_check(self, compiled, expected)
                deep_check_groups(self, groups)
                plan = reconcile(self.installed, expected, ahead, slices=self.slices())
                let_go(expected, self.pause, self.slice_clock)  # a million decrefs: in parts too
                plan = plan.with_groups(group_plan(self.installed_groups, groups))
                stages["verify_ms"] = ms_since(mark)
            st.flows_installed = sum(self.installed.values())
        st.flows_desired = self.local_flows + len(state.shared)
        st.groups_desired = len(groups)
        if delta is None and (deep or bridge is not self.synced_bridge):
            self.assert_master()
            error = self.app.pathmtu.sync_meters(self.switch, bridge, self.label)  # before the flows
            if error:
                self._record_error(error)
        rejected = 0
        if plan:
            self.assert_master()
            mark = time.monotonic()
            flow_of = flow_namer(state.shared, compiled.flows if delta is None else {}, groups)
            result = self.switch.apply(plan, name_of=flow_of)
            stages["switch_ms"] = ms_since(mark)  # encode what is new, bundle, commit, barrier
            if not result.committed:  # the switch holds what it held; the periodic check retries
                text = f"change not applied: the bundle was refused {result.attempts} times"
                LOG.error("bridge %s: %s", self.label, text)
                self._record_error(text)
                self.synced_bridge = None  # the next sync is a full one
                let_go_plan(plan, self.pause, self.slice_clock)
                return
            st.flow_mods_sent += result.sent
            st.group_mods_sent += result.groups_sent
            self.app.metrics.inc("lisp_flow_mods_sent_total", result.sent)
            self.app.metrics.inc("lisp_group_mods_sent_total", result.groups_sent)
            failed = set(result.failed)
            st.flows_installed += record(self.installed, plan, failed, self.slices())
            record_groups(self.installed_groups, plan.groups, failed)
            rejected = len(result.failed)
            if result.failed:
                adds = {c for c, _ in plan.add}  # once: a full table may reject thousands
                put_groups = {g.group_id for g in plan.groups.add + plan.groups.modify}
                for key, text in result.failed.items():
                    self.app.metrics.inc("lisp_openflow_errors_total")
                    if key in put_groups or key in plan.groups.delete:
                        what = flow_of(key) if key in put_groups else f"delete group_id={key}"
                        self._record_error(f"group rejected: {what}: {text}")
                    else:
                        what = flow_of(key) if key in adds else f"delete cookie={key:#x}"
                        self._record_error(f"flow rejected: {what}: {text}")
            LOG.info("bridge %s: %d flows removed, %d added%s%s in %.0f ms, confirmed by barrier",
                     self.label, len(plan.delete), len(plan.add) - len(result.failed),
                     f", {len(result.failed)} rejected" if result.failed else "",
                     groups_text(plan.groups), (time.monotonic() - started) * 1000)
            let_go_plan(plan, self.pause, self.slice_clock)  # two million at a reconnect: in slices
        elif delta is None:
            # Said once per connection (and after starting over); routine after.
            LOG.log(logging.INFO if first else logging.DEBUG,
                    "bridge %s: all %d flows%s already correct, nothing sent%s", self.label,
                    st.flows_desired, and_groups(st.groups_desired), " (deep check)" if deep else "")
        st.groups_installed = len(self.installed_groups)
        self.synced_bridge, self.synced_ports = bridge, ports
        st.last_reconcile = time.time()
        st.last_reconcile_ms = (time.monotonic() - started) * 1000
        st.synced_generation = generation
        st.last_rejected = rejected
        st.last_stages = stages
        self.app.metrics.observe_sync(st.bridge.label, st.last_reconcile_ms / 1000)
        self.synced()

    def slices(self) -> Slices:
        """Slices for one long step of a sync."""
        return Slices(self.pause, clock=self.slice_clock)

    def _record_error(self, text: str) -> None:
        errors = self.status.errors
        errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}")
        del errors[:-MAX_ERRORS_KEPT]


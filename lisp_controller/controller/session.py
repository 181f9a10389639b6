"""One bridge's session: its connection's greenthread, supervised.

A session reads the bridge (ports, our flows and groups), syncs it, then loops:
wait for a change or the periodic deep check, compile, diff, send the
difference as one bundle. Everything a bridge is sent goes through this
one greenthread, so a deep check never sees a sync half done
(docs/reliability.rst); except the flows the xTR learned and sent ahead of
their commit (lisp/xtr.py), which a sync counts as wanted (`flows_ahead`).

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.controller.reconcile import Stream, catch_up, group_plan, reconcile, record, record_groups
from lisp_controller.controller.roles import EQUAL, MASTER, BridgeRole, Deposed
from lisp_controller.controller.slices import Slices, sliced
from lisp_controller.model import Bridge
from lisp_controller.openflow import verify
from lisp_controller.openflow.encode import encode_delete
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.switch import Switch, port_name
from lisp_controller.pipeline.compiler import Compiled, compile_local
from lisp_controller.pipeline.flows import Flow, Group, flow_mods, render, render_group

if TYPE_CHECKING:
    from lisp_controller.controller.app import LispControllerApp

LOG = logging.getLogger("lisp_controller")
MAX_ERRORS_KEPT = 50
FIRST_RETRY = 0.5  # seconds before a failed session starts over
LAST_RETRY = 30.0  # the longest pause between attempts
ABORT = object()  # a streamed change failed midway: discard the bundle

# Called with the bridge's label before each sync; may raise. Lets a test
# make syncs fail (lab/serve.py); the default does nothing.
SyncHook = Callable[[str], None]


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
    groups_desired: int = 0
    groups_installed: int = 0
    missing_ports: tuple[str, ...] = ()
    last_reconcile: float | None = None
    last_reconcile_ms: float | None = None
    flow_mods_sent: int = 0
    group_mods_sent: int = 0
    synced_generation: int = -1  # state generation the bridge last confirmed
    verified_ms: float | None = None  # from connection to the first full sync
    last_stages: dict = field(default_factory=dict)  # milliseconds of the last sync's stages
    last_rejected: int = 0  # flows the switch refused in that sync
    last_verify: float | None = None  # the last deep check (whole flows compared)
    last_verify_ms: float | None = None  # its duration: the dump and the comparison
    flows_repaired: int = 0  # flows found changed by hand and replaced, since connecting
    session_failures: int = 0  # times the session failed and started over, since connecting
    # OpenFlow role of this instance's connection (docs/etcd.rst, "Bridge
    # ownership"): equal without an etcd store (the only controller), else
    # master or slave, and the generation ID the switch took as master.
    role: str = EQUAL
    generation: int | None = None
    role_changes: int = 0
    failing: str | None = None  # why the session is starting over now; None once in sync
    errors: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.errors) or self.failing is not None


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
        self._synced_bridge: Bridge | None = None
        self._synced_ports: dict[str, int] = {}
        self._local_flows = 0
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
        their commit (lisp/xtr.py): the next sync counts them as installed,
        so the commit's sync does not send them again. Only this session's
        greenthread changes `installed`; it takes them in then."""
        self._noted += cookies

    def _take_noted(self) -> None:
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
        self.installed = self.switch.installed_cookies()
        self.installed_groups = self.switch.groups()
        self._synced_bridge = None  # the first sync of an attempt is a full one
        st.flows_installed, st.groups_installed = sum(self.installed.values()), len(self.installed_groups)
        LOG.info("bridge %s: %s, %d ports, %d flows%s of ours installed (read in %.0f ms)", self.label,
                 why, len(st.ports), sum(self.installed.values()), _and_groups(len(self.installed_groups)),
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
        self._synced_bridge = None
        self.feed = None

    def _assert_master(self) -> None:
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
            st.verified_ms = _ms_since(connected)
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
                self._take_stream(feed)
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

    def _synced(self) -> None:
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
        self.app.before_sync(self.label)
        started = time.monotonic()
        # Plan under the change lock: a big change applied to the state
        # yields to the hub midway, and a bridge must never see half of it.
        with self.app.change_lock:
            self._take_noted()
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
                delta = state.shared_delta(st.synced_generation, self._slices())
            if delta is None:
                compiled = compile_local(bridge, ports, state.shared)
                local = flow_mods(compiled.flows)
                # A deep check compares against a copy: it reads the switch
                # outside the lock, and the state may move meanwhile.
                expected = {**state.encoded, **local} if deep else None
                # Under the lock nobody changes the state, and only this
                # greenthread changes `installed`: the diff may yield.
                # Learned flows the xTR sent ahead of their commit are wanted
                # too (lisp/xtr.py): a full sync must not remove them.
                plan = None if deep else reconcile(self.installed, state.encoded, local, self.app.flows_ahead(),
                                                   slices=self._slices())
                self._local_flows = len(local)
            else:
                plan = catch_up(self.installed, delta[0], delta[1], state.encoded, self._slices())
            groups = dict(state.shared.groups)  # few: one per RLOC set in use
            if plan is not None:
                plan = plan.with_groups(group_plan(self.installed_groups, groups))
        stages = {"plan_ms": _ms_since(started)}
        if delta is None:
            self._report_missing_ports(compiled.missing_ports)
            if deep:  # compare whole flows first; the diff then repairs what differs
                mark = time.monotonic()
                ahead = self._deep_check(compiled, expected)
                self._deep_check_groups(groups)
                plan = reconcile(self.installed, expected, ahead, slices=self._slices())
                plan = plan.with_groups(group_plan(self.installed_groups, groups))
                stages["verify_ms"] = _ms_since(mark)
            st.flows_installed = sum(self.installed.values())
        st.flows_desired = self._local_flows + len(state.shared)
        st.groups_desired = len(groups)
        if delta is None and (deep or bridge is not self._synced_bridge):
            self._assert_master()
            error = self.app.pathmtu.sync_meters(self.switch, bridge, self.label)  # before the flows
            if error:
                self._record_error(error)
        rejected = 0
        if plan:
            self._assert_master()
            mark = time.monotonic()
            flow_of = self._flow_namer(compiled.flows if delta is None else {}, groups)
            result = self.switch.apply(plan, name_of=flow_of)
            stages["switch_ms"] = _ms_since(mark)  # encode what is new, bundle, commit, barrier
            if not result.committed:  # the switch holds what it held; the periodic check retries
                text = f"change not applied: the bundle was refused {result.attempts} times"
                LOG.error("bridge %s: %s", self.label, text)
                self._record_error(text)
                self._synced_bridge = None  # the next sync is a full one
                return
            st.flow_mods_sent += result.sent
            st.group_mods_sent += result.groups_sent
            self.app.metrics.inc("lisp_flow_mods_sent_total", result.sent)
            self.app.metrics.inc("lisp_group_mods_sent_total", result.groups_sent)
            failed = set(result.failed)
            st.flows_installed += record(self.installed, plan, failed, self._slices())
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
                     _groups_text(plan.groups), (time.monotonic() - started) * 1000)
        elif delta is None:
            # Said once per connection (and after starting over); routine after.
            LOG.log(logging.INFO if first else logging.DEBUG,
                    "bridge %s: all %d flows%s already correct, nothing sent%s", self.label,
                    st.flows_desired, _and_groups(st.groups_desired), " (deep check)" if deep else "")
        st.groups_installed = len(self.installed_groups)
        self._synced_bridge, self._synced_ports = bridge, ports
        st.last_reconcile = time.time()
        st.last_reconcile_ms = (time.monotonic() - started) * 1000
        st.synced_generation = generation
        st.last_rejected = rejected
        st.last_stages = stages
        self.app.metrics.observe_sync(st.bridge.label, st.last_reconcile_ms / 1000)
        self._synced()

    def _report_missing_ports(self, missing: tuple[str, ...]) -> None:
        """A configured port the bridge lacks is a condition that lasts:
        said when it starts, when the set changes and when it ends, not
        on every sync (and not again on a reconnect: the app remembers)."""
        st = self.status
        st.missing_ports = missing
        said = self.app.missing_ports_said.get(st.bridge.label, ())
        if missing == said:
            return
        self.app.missing_ports_said[st.bridge.label] = missing
        if missing:
            LOG.warning("bridge %s: configured ports not on the bridge: %s (their flows are left out)",
                        self.label, ", ".join(missing))
        else:
            LOG.info("bridge %s: every configured port is on the bridge now (%s was missing)",
                     self.label, ", ".join(said))

    def streamable(self) -> bool:
        """True if this bridge can take the change about to be made as a
        stream: it is idle and holds exactly the current state, so the
        change's own flow edits are all it needs (called under the change
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
        self._take_noted()
        stream = Stream(self.installed, self.installed_groups)
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
            try:
                self._assert_master()
            except Deposed:
                bundle.discard()
                raise
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
        sent = bundle.count - stream.group_mods
        stream.record(pause=lambda: hub.sleep(0))
        st.flows_installed = sum(self.installed.values())
        st.groups_installed = len(self.installed_groups)
        st.group_mods_sent += stream.group_mods
        self.app.metrics.inc("lisp_group_mods_sent_total", stream.group_mods)
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
        self._synced()

    def _flow_namer(self, local: dict[int, Flow], groups: dict[int, Group]) -> Callable[[int], str]:
        """A cookie's flow, or a group ID's group, in ovs-ofctl syntax, for
        logs and errors."""
        shared = self.app.state.shared

        def name(key: int) -> str:
            group = groups.get(key)  # group IDs and our cookies never meet (Plan.group_mods)
            if group is not None:
                return render_group(group)
            flow = local.get(key) or shared.get(key)
            return render(flow) if flow is not None else f"cookie={key:#x}"
        return name

    def _deep_check(self, compiled: Compiled, expected: dict[int, bytes]) -> dict[int, bytes]:
        """Read every flow of ours and count one whose content differs
        from its cookie's flow twice, so reconcile replaces it. Returns the
        learned flows the xTR sent ahead of their commit, as they are after
        the read: the bridge may hold them and should (lisp/xtr.py); they
        are not drift. Their commit waits for this session's sync, so none
        of them is committed and dropped from the xTR's list meanwhile.

        Drift is what differs from what this session last left on the
        bridge (`installed`), not from `expected`: the state may have moved
        since the last sync, and the difference that makes is the sync
        about to be sent, not a repair. Only this greenthread writes to
        the bridge, so nothing of ours is in flight while it reads."""
        started = time.monotonic()
        left = self.installed
        # Split as they are compared, a slice at a time: at 1,000,000 flows
        # the two take seconds (docs/performance.rst, "A free hub").
        # `expected` is a copy and nobody else writes to the bridge, so a
        # change made while this yields cannot make it see drift.
        cut = self._slices()
        verdict = verify.installed_counts(sliced(self.switch.flow_entries(), cut), expected)
        self.installed = verdict.counts
        self.status.last_verify = time.time()
        self.status.last_verify_ms = _ms_since(started)
        if verdict.changed:
            self.status.flows_repaired += len(verdict.changed)
            self.app.metrics.inc("lisp_flows_repaired_total", len(verdict.changed))
            name = self._flow_namer(compiled.flows, {})
            LOG.warning("bridge %s: %d flows of ours were changed on the switch (by hand?); "
                        "replacing them with: %s", self.label, len(verdict.changed),
                        "; ".join(name(c) for c in verdict.changed[:5]))
        ahead = self.app.flows_ahead()
        stray = sum(1 for c in sliced(verdict.counts, cut) if c not in left and c not in ahead)
        gone = sum(1 for c in sliced(left, cut) if c not in verdict.counts)
        if verdict.duplicates or stray or gone:
            LOG.warning("bridge %s: deep check found %d duplicate, %d unwanted and %d missing "
                        "flows under our cookie; repairing", self.label, verdict.duplicates,
                        stray, gone)
        return ahead

    def _deep_check_groups(self, expected: dict[int, Group]) -> None:
        """Read our groups back whole: one changed by hand is replaced, one
        deleted is added back, one we no longer use is deleted."""
        self.installed_groups = self.switch.groups()
        changed = [gid for gid, g in self.installed_groups.items() if gid in expected and g != expected[gid]]
        if changed:
            self.status.flows_repaired += len(changed)
            self.app.metrics.inc("lisp_flows_repaired_total", len(changed))
            LOG.warning("bridge %s: %d groups of ours were changed on the switch (by hand?); "
                        "replacing them with: %s", self.label, len(changed),
                        "; ".join(render_group(expected[gid]) for gid in changed[:5]))

    def _slices(self) -> Slices:
        """Slices for one long step of a sync."""
        return Slices(self.pause, clock=self.slice_clock)

    def _record_error(self, text: str) -> None:
        errors = self.status.errors
        errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}")
        del errors[:-MAX_ERRORS_KEPT]


def _and_groups(n: int) -> str:
    """" and 2 groups" for a log line about flows; nothing without groups."""
    return f" and {n} group{'' if n == 1 else 's'}" if n else ""


def _groups_text(plan) -> str:
    """What a sync did to groups, for its log line; nothing if nothing."""
    if not len(plan):
        return ""
    return f"; groups: {len(plan.add)} added, {len(plan.modify)} changed, {len(plan.delete)} removed"


def _ms_since(mark: float) -> float:
    return round((time.monotonic() - mark) * 1000, 1)

"""The only OpenFlow I/O: requests and their replies, matched by xid.

A `Switch` wraps one os-ken datapath. Its methods block the calling
greenthread (never os-ken's: the replies arrive there, through its event
thread, or through its receive loop for flow dumps, see tap.py) until
the switch answers or a deadline passes. Changes go out as one atomic,
ordered ONF bundle followed by a barrier; an error that names a bundle
message's xid names the flow that caused it.
"""
from __future__ import annotations

import collections
import itertools
import logging
import random
import struct
from dataclasses import dataclass, field
from typing import Callable, Container, Iterator, Sequence

from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.openflow import encode, tap, verify
from lisp_controller.openflow.bundle import SEND_CHUNK, Bundle
from lisp_controller.openflow.errors import ROLE_NAMES, SwitchError, describe_error, is_not_master
from lisp_controller.openflow.flowstats import FlowCounts, flow_stats
from lisp_controller.model.parted import PartedDict
from lisp_controller.controller.gcpause import BIG, breathe, gc_paused
from lisp_controller.pipeline.flows import COOKIE_BASE, COOKIE_TAG_MASK, Group, Meter, is_our_group
from lisp_controller.controller.reconcile import Plan

LOG = logging.getLogger(__name__)

PIPELINE_MAX = 64  # a plan of at most this many adds, and no deletes, skips the bundle
# Bundle bytes the switch may hold unparsed at once (see Switch.send_paced):
# whatever is sent meanwhile (a learned flow, a packet-out) waits behind at
# most this much, about 860 bundle adds of a mapping: 20 ms for OVS 3.1
# here (docs/performance.rst, "Learned flows during a bulk").
IN_FLIGHT = 2 * SEND_CHUNK


@dataclass
class _Pending:
    event: object = field(default_factory=hub.Event)
    replies: list = field(default_factory=list)
    error: object = None
    consume: Callable[[object], None] | None = None
    flow_stats: bool = False  # a flow dump: its replies come as bytes (tap.py)
    finished: bool = False  # its last part arrived


@dataclass
class ApplyResult:
    committed: bool
    sent: int  # flow-mods in the committed bundle
    failed: dict[int, str]  # cookie (or group ID) -> error text, for what the switch rejected
    attempts: int
    groups_sent: int = 0  # group-mods in the committed bundle


class Switch:
    def __init__(self, datapath, label: str = "", timeout: float = 30.0, pace_bundles: bool = True):
        self.dp = datapath
        self.label = label or f"{datapath.id:016x}"
        self.timeout = timeout
        # False: bundle writes go out as fast as the socket takes them
        # (`send_paced` does not wait); the bulk is then faster, but a
        # message sent meanwhile waits behind all of it.
        self.pace_bundles = pace_bundles
        self._pending: dict[int, _Pending] = {}
        # Flow dumps given up on (timed out, failed) before their last part:
        # the parts still to come are ours and dropped. Handed to os-ken,
        # a million flows would be parsed into objects for minutes, holding
        # the hub (docs/performance.rst, "A free hub").
        self._abandoned: set[int] = set()
        self._next_xid = random.randint(1 << 30, 1 << 31)
        self._bundle_ids = itertools.count(1)
        # The open bundle's messages have consecutive xids: (first, count),
        # and the errors received for them by offset.
        self._bundle_xids: tuple[int, int] | None = None
        self._bundle_errors: dict[int, object] = {}
        # Paced writes not yet confirmed: (barrier xid, bytes, its waiter).
        self._in_flight: collections.deque[tuple[int, int, _Pending]] = collections.deque()
        self._in_flight_bytes = 0
        # Flow-mods sent without waiting (send_flow_mods): xid -> (whom to
        # tell if the switch refuses it, its index in what was sent).
        self._refusals: dict[int, tuple[Callable[[int, object], None], int]] = {}
        self.closed = False
        # Flow dumps are answered on our side of the socket, as bytes.
        self.tap = tap.install(datapath, self._claim, pause=lambda: breathe(_yield)) \
            if hasattr(datapath, "socket") else None

    # -- called from os-ken's threads ----------------------------------------
    def on_reply(self, msg) -> bool:
        """Route a reply that os-ken parsed to whoever waits for its xid;
        True if it was ours. A flow-stats reply goes on as its bytes."""
        pending = self._pending.get(msg.xid)
        if pending is None:
            if msg.xid in self._abandoned:
                self._drop_abandoned(msg.xid, msg.flags)
                return True
            return False
        if pending.flow_stats:
            self._flow_stats_reply(pending, msg.flags, msg.buf)
            return True
        if pending.consume is not None:
            pending.consume(msg)
        else:
            pending.replies.append(msg)
        if not getattr(msg, "flags", 0) & ofp.OFPMPF_REPLY_MORE:
            pending.event.set()
        return True

    def _claim(self, xid: int) -> Callable[[int, bytes], None] | None:
        """For the tap: the handler of a flow-stats reply with this xid."""
        pending = self._pending.get(xid)
        if pending is None:
            return (lambda flags, buf: self._drop_abandoned(xid, flags)) if xid in self._abandoned else None
        if not pending.flow_stats:
            return None
        return lambda flags, buf: self._flow_stats_reply(pending, flags, buf)

    def _drop_abandoned(self, xid: int, flags: int) -> None:
        """A part of a dump given up on: dropped; after its last, the xid is
        no longer ours."""
        if not flags & ofp.OFPMPF_REPLY_MORE:
            self._abandoned.discard(xid)

    def _flow_stats_reply(self, pending: _Pending, flags: int, buf: bytes) -> None:
        """One part of a flow dump, as bytes: kept, or handed to the
        waiter's `consume`. Runs in os-ken's receive loop: a bad reply
        fails the request, never the loop."""
        if not flags & ofp.OFPMPF_REPLY_MORE:
            pending.finished = True
        if pending.event.is_set():
            return  # failed already; the rest of the dump is dropped
        try:
            if pending.consume is not None:
                pending.consume(buf)
            else:
                pending.replies.append(buf)
        except (ValueError, struct.error) as e:
            pending.error = f"malformed flow-stats reply ({e})"
            pending.event.set()
            return
        if not flags & ofp.OFPMPF_REPLY_MORE:
            pending.event.set()

    def on_error(self, msg) -> bool:
        if self._bundle_xids is not None:
            first, count = self._bundle_xids
            offset = (msg.xid - first) & 0xFFFFFFFF
            if offset < count:
                self._bundle_errors[offset] = msg
                return True
        refusal = self._refusals.pop(msg.xid, None)
        if refusal is not None:
            handler, index = refusal
            try:
                handler(index, msg)
            except Exception:  # runs in os-ken's event thread: a bug there must not stop it
                LOG.exception("bridge %s: handling a refused flow-mod failed", self.label)
            return True
        pending = self._pending.get(msg.xid)
        if pending is None:
            return False
        pending.error = msg
        pending.event.set()
        return True

    def close(self) -> None:
        """The connection is gone: wake every waiter with an error."""
        self.closed = True
        self._abandoned.clear()
        self._refusals.clear()
        for pending in self._pending.values():
            pending.error = pending.error or "disconnected"
            pending.event.set()

    # -- requests ----------------------------------------------------------
    def _xid(self, count: int = 1) -> int:
        """The first of `count` consecutive xids; never 0, which anonymous
        bundle messages use (see Bundle)."""
        first = self._next_xid
        if first == 0 or first + count > 0xFFFFFFFF:
            first = 1
        self._next_xid = first + count
        return first

    def _send(self, buf: bytes) -> None:
        if self.closed or not self.dp.send(buf):
            raise SwitchError(f"bridge {self.label}: connection closed")

    def send_paced(self, data: bytes) -> None:
        """Write part of a big change (bundle adds) so that the switch never
        has more than IN_FLIGHT bytes of it to parse: each write is followed
        by a barrier, and the next waits for the replies of the older ones.
        The switch takes one connection's messages in order, so a message
        written in between (a learned flow and its packet-out) is parsed
        after at most IN_FLIGHT bytes of the change, however big the change
        and however much of it is ready (docs/control-plane.rst, "During a
        big change"). Without `pace_bundles`, it is a plain write."""
        if not self.pace_bundles:
            self._send(data)
            return
        queue = self._in_flight
        while queue and self._in_flight_bytes + len(data) > IN_FLIGHT:
            xid, size, pending = queue[0]
            answered = pending.event.wait(self.timeout)
            if self.closed:
                raise SwitchError(f"bridge {self.label}: connection closed")
            if not answered:
                raise SwitchError(f"bridge {self.label}: no reply to the barrier after a bundle write "
                                  f"within {self.timeout:.0f} s")
            queue.popleft()
            self._pending.pop(xid, None)
            self._in_flight_bytes -= size
        xid = self._xid()
        pending = self._pending[xid] = _Pending()
        queue.append((xid, len(data), pending))
        self._in_flight_bytes += len(data)
        self._send(data + encode.barrier(xid))

    def settle_paced(self) -> None:
        """Forget the paced writes' barriers (a later reply, such as a
        commit's, means the switch answered them all)."""
        for xid, _, _ in self._in_flight:
            self._pending.pop(xid, None)
        self._in_flight.clear()
        self._in_flight_bytes = 0

    def request(self, build: Callable[[int], bytes], what: str, timeout: float | None = None,
                consume: Callable[[object], None] | None = None, flow_stats: bool = False) -> list:
        """Send a request and wait for its reply: the list of its parts,
        or, with `consume`, each part is handed to it as it arrives and
        none is kept (a dump of a million flows is 130 MB of replies).
        The parts of a `flow_stats` reply are its message bytes."""
        xid = self._xid()
        pending = self._pending[xid] = _Pending(consume=consume, flow_stats=flow_stats)
        try:
            self._send(build(xid))
            if not pending.event.wait(timeout or self.timeout):
                raise SwitchError(f"bridge {self.label}: no reply to {what} "
                                  f"within {timeout or self.timeout:.0f} s")
            if pending.error is not None:
                raise SwitchError.refused(f"bridge {self.label}: {what} failed", pending.error)
            return pending.replies
        finally:
            del self._pending[xid]
            if flow_stats and not pending.finished and not self.closed:
                self._abandoned.add(xid)

    def role_request(self, role: int, generation: int = 0) -> tuple[int, int]:
        """Ask for `role` (OFPCR_ROLE_*) with `generation`; (the role, the
        switch's generation ID) from its reply. A refusal (a stale
        generation: OFPRRFC_STALE) is a SwitchError naming the error."""
        what = f"role request {ROLE_NAMES.get(role, role)} (generation {generation})"
        reply = self.request(lambda xid: encode.role_request(xid, role, generation), what)[0]
        return reply.role, reply.generation_id

    def port_desc(self) -> tuple[dict[str, int], str | None]:
        """Port numbers by name, and the bridge's name (its LOCAL port)."""
        ports: dict[str, int] = {}
        local = None
        for reply in self.request(encode.port_desc_request, "port description"):
            for port in reply.body:
                name = port_name(port)
                if port.port_no == ofp.OFPP_LOCAL:
                    local = name
                elif port.port_no <= ofp.OFPP_MAX:
                    ports[name] = port.port_no
        return ports, local

    def installed_cookies(self) -> PartedDict:
        """How many flows the bridge holds under each of our cookies; in
        parts (model/parted.py): the session's `installed`, which a bulk
        fills up to a million, a dict doubling its table in one step of
        60 to 85 ms."""
        counts = PartedDict()
        parts, size = counts.parts, counts.PARTS

        def count(buf: bytes) -> None:
            with gc_paused(BIG):  # one reply: hundreds of new objects, no yield
                for stat in flow_stats(buf):
                    cookie = stat.cookie
                    part = parts[cookie % size]
                    part[cookie] = part.get(cookie, 0) + 1

        self._dump("flow dump", count)
        return counts

    def flow_entries(self) -> Iterator[verify.Entry]:
        """Every flow under our cookie prefix, whole (match and
        instructions): the deep check compares them with what their cookies
        name. The replies are split here, without os-ken's object tree, one
        entry at a time as the caller takes them: the caller slices the
        work (a million entries take seconds to split) and keeps none."""
        replies = self._dump("flow dump (deep check)")
        return (e for buf in replies for e in verify.split_flow_stats(buf))

    def flow_counters(self, table: int, timeout: float | None = None,
                      into: FlowCounts | None = None) -> FlowCounts:
        """Packets and bytes per cookie of our flows in one table: the
        status page shows how much traffic each mapping carries. Only one
        table is asked for, so a bridge with many local flows costs no
        more. Summed into `into` if given (the same flows on several
        bridges), as each reply arrives: the reading yields between
        replies, and no later pass over a million counters holds the hub."""
        counters = FlowCounts() if into is None else into
        parts, size, shift = counters.parts, FlowCounts.PARTS, FlowCounts.PACKETS_BITS

        def add(buf: bytes) -> None:  # FlowCounts.add, inlined: a million times per refresh
            for stat in flow_stats(buf):
                cookie = stat.cookie
                part = parts[cookie % size]
                part[cookie] = part.get(cookie, 0) + (stat.byte_count << shift | stat.packet_count)

        self._dump(f"flow statistics of table {table}", add, timeout, table)
        return counters

    def _dump(self, what: str, consume: Callable[[bytes], None] | None = None,
              timeout: float | None = None, table: int = ofp.OFPTT_ALL) -> list[bytes]:
        """Our flows (cookie prefix) in `table`: the replies' bytes."""
        return self.request(lambda xid: encode.flow_stats_request(xid, COOKIE_BASE, COOKIE_TAG_MASK, table),
                            what, timeout, consume=consume, flow_stats=True)

    def barrier(self) -> None:
        self.request(encode.barrier, "barrier")

    def send(self, msg: bytes) -> None:
        """Send a message that needs no answer (a packet-out), now."""
        self._send(encode.with_xid(msg, self._xid()))

    def send_many(self, msgs: Sequence[bytes]) -> None:
        """Send messages that need no answer (packet-outs) in one write:
        one item of the datapath's send queue, one system call."""
        if msgs:
            first = self._xid(len(msgs))
            self._send(b"".join(encode.with_xid(m, first + i) for i, m in enumerate(msgs)))

    def send_flow_mods(self, flow_mods: Sequence[bytes], then: Sequence[bytes] = (),
                       refused: Callable[[int, object], None] | None = None) -> "Unconfirmed":
        """Send `flow_mods`, a barrier and `then` (packet-outs of packets
        that must meet those flows) in one write, without waiting for the
        switch. A switch takes one connection's messages in order and
        applies a flow-mod before it reads the next message, so a packet
        sent after its flow meets it (tests/test_bundle_ovs.py). For each
        flow-mod the switch refuses, `refused(index, error)` is called as
        its error arrives: before the barrier's reply and before any
        packet-in a packet of `then` causes, which follow it on the same
        connection. `wait()` on the result waits for the barrier's reply."""
        n = len(flow_mods)
        first = self._xid(n + 1 + len(then))
        if refused is not None:
            for i in range(n):
                self._refusals[first + i] = (refused, i)
        done = self._pending[first + n] = _Pending()
        parts = [encode.with_xid(m, first + i) for i, m in enumerate(flow_mods)]
        parts.append(encode.barrier(first + n))
        parts += (encode.with_xid(m, first + n + 1 + i) for i, m in enumerate(then))
        try:
            self._send(b"".join(parts))
        except SwitchError:
            self._forget_refusals(first, n)
            del self._pending[first + n]
            raise
        return Unconfirmed(self, first, n, done)

    def _forget_refusals(self, first: int, count: int) -> None:
        for xid in range(first, first + count):
            self._refusals.pop(xid, None)

    def send_confirmed(self, msg: bytes, what: str) -> None:
        """Send a message that has no reply and confirm it with a barrier;
        SwitchError with the switch's words if it refused it (an error
        reaches us before the barrier's reply)."""
        xid = self._xid()
        pending = self._pending[xid] = _Pending()
        try:
            self._send(encode.with_xid(msg, xid))
            self.barrier()
            if pending.error is not None:
                raise SwitchError.refused(f"bridge {self.label}: {what} refused", pending.error)
        finally:
            del self._pending[xid]

    def meters(self) -> dict[int, Meter | None]:
        """The bridge's meters by ID, as our values (None for a meter of a
        shape we never make)."""
        return {config.meter_id: encode.meter_of(config)
                for reply in self.request(encode.meter_config_request, "meter configuration")
                for config in reply.body}

    def meter_counts(self, meter_id: int, timeout: float | None = None) -> tuple[int, int]:
        """(packets that entered the meter, packets its band dropped) since
        the meter was made."""
        for reply in self.request(lambda xid: encode.meter_stats_request(xid, meter_id),
                                  f"statistics of meter {meter_id}", timeout):
            for stat in reply.body:
                if stat.meter_id == meter_id:
                    return stat.packet_in_count, sum(b.packet_band_count for b in stat.band_stats)
        return 0, 0

    def groups(self) -> dict[int, Group | None]:
        """The bridge's groups in our ID range, as our values (None for one
        of a shape we never make). Others' groups are not even looked at."""
        return {desc.group_id: encode.group_of(desc)
                for reply in self.request(encode.group_desc_request, "group description")
                for desc in reply.body if is_our_group(desc.group_id)}

    def group_counters(self, timeout: float | None = None) -> dict[int, tuple[tuple[int, int], ...]]:
        """(packets, bytes) of each bucket of our groups, by group ID."""
        return {stat.group_id: tuple((b.packet_count, b.byte_count) for b in stat.bucket_stats)
                for reply in self.request(encode.group_stats_request, "group statistics", timeout)
                for stat in reply.body if is_our_group(stat.group_id)}

    # -- changes -----------------------------------------------------------
    def apply(self, plan: Plan, max_attempts: int = 64,
              name_of: Callable[[int], str] | None = None) -> ApplyResult:
        """Send `plan` as one atomic bundle and confirm it with a barrier.

        If the switch rejects flows, the bundle is retried without them (the
        rest of the change must not wait for one bad flow); the rejected
        cookies and the switch's words come back in `failed`. OVS names one
        flow per failed commit, so each attempt leaves out at least one
        more; `max_attempts` bounds the work when very many are refused.
        The plan's groups go in the same bundle, before the flows that use
        them and (deletes) after the flows that used them. `name_of`
        renders a cookie's flow, or a group ID's group, for the log."""
        failed: dict[int, str] = {}
        groups_first, groups_last = plan.group_mods()
        group_ids = {gid for gid, _ in groups_first + groups_last}
        if not plan.delete and 0 < len(plan.add) <= PIPELINE_MAX and not group_ids:
            # New flows only (a learned mapping): each flow-mod is atomic on
            # its own and nothing is replaced, so one write and one barrier
            # do, three round trips fewer than a bundle.
            errors = self._pipelined(plan.add)
            self._raise_if_slave(errors, "flow-mods")
            for cookie, err in errors.items():
                failed[cookie] = describe_error(err)
                LOG.error("bridge %s: switch rejected flow %s: %s", self.label,
                          name_of(cookie) if name_of is not None else f"cookie={cookie:#x}", failed[cookie])
            return ApplyResult(True, len(plan.add), failed, 1)
        for attempt in range(1, max_attempts + 1):
            first = tuple(m for m in groups_first if m[0] not in failed)
            last = tuple(m for m in groups_last if m[0] not in failed)
            ok, rejected, sent = self._bundle(first, plan.delete, plan.add, last, failed)
            self._raise_if_slave(rejected, "bundle")
            for key, err in rejected.items():
                text = describe_error(err)
                failed[key] = text
                LOG.error("bridge %s: switch rejected %s %s: %s", self.label,
                          "group" if key in group_ids else "flow",
                          name_of(key) if name_of is not None else f"{key:#x}", text)
            if ok:
                self.barrier()
                return ApplyResult(True, sent, failed, attempt, len(first) + len(last))
            if not rejected:
                raise SwitchError(f"bridge {self.label}: bundle commit failed and no flow was named")
        return ApplyResult(False, 0, failed, max_attempts)

    def _raise_if_slave(self, errors: dict[int, object], what: str) -> None:
        """A write refused because this connection is SLAVE now (a newer
        master claimed the bridge): the whole change is refused, not one
        flow of it; raised as the SwitchError it is (`not_master`)."""
        refusal = next((err for err in errors.values() if is_not_master(err)), None)
        if refusal is not None:
            raise SwitchError.refused(f"bridge {self.label}: {what} refused", refusal)

    def _pipelined(self, adds: tuple[tuple[int, bytes], ...]) -> dict[int, object]:
        """Send flow-mods back to back, then a barrier; the errors the
        switch sent for them (by cookie), which arrive before the barrier's
        reply."""
        first = self._xid(len(adds))
        pending = [(cookie, first + i, self._pending.setdefault(first + i, _Pending()))
                   for i, (cookie, _) in enumerate(adds)]
        try:
            self._send(b"".join(encode.with_xid(data, first + i) for i, (_, data) in enumerate(adds)))
            self.barrier()
            return {cookie: p.error for cookie, _, p in pending if p.error is not None}
        finally:
            for _, xid, _ in pending:
                self._pending.pop(xid, None)

    def _bundle(self, first: Sequence[tuple[int, bytes]], deletes: Sequence[int],
                adds: Sequence[tuple[int, bytes]], last: Sequence[tuple[int, bytes]],
                failed: Container[int]) -> tuple[bool, dict[int, object], int]:
        """One ordered bundle: groups the flows need, flow deletes, flow
        adds (but none in `failed`: refused before), groups no flow uses
        any more; (committed?, the errors by cookie, flow-mods sent). The
        plan's flows are taken one by one as the bundle goes out, which
        yields to the hub every few hundred: a copy of them without the
        refused ones, made before, held the hub 0.6 s at a plan of two
        million, and letting go of it 0.1 s more (docs/performance.rst,
        "Single steps at a million")."""
        bundle = self.open_bundle(max(1, len(first) + len(deletes) + len(adds) + len(last)))
        try:
            bundle.add_many(first)
            bundle.add_many((c, encode.encode_delete(c)) for c in deletes if c not in failed)
            bundle.add_many(adds if not failed else ((c, data) for c, data in adds if c not in failed))
            sent = bundle.count - len(first)
            bundle.add_many(last)
            return (*bundle.commit(), sent)
        finally:
            bundle.close()

    def open_bundle(self, capacity: int = 0) -> "Bundle":
        """An open ONF bundle: named, for up to `capacity` messages, or
        anonymous if `capacity` is 0 (see Bundle)."""
        return Bundle(self, capacity)


class Unconfirmed:
    """Flow-mods sent without waiting for the switch (Switch.send_flow_mods)."""

    def __init__(self, switch: Switch, first: int, count: int, barrier: _Pending):
        self.switch, self._first, self._count, self._barrier = switch, first, count, barrier

    def wait(self, timeout: float | None = None) -> None:
        """Until the switch answered the barrier behind the flow-mods: every
        refusal among them has been handed over by then. SwitchError if it
        did not answer in time or went away."""
        sw = self.switch
        try:
            answered = self._barrier.event.wait(timeout or sw.timeout)
            if self._barrier.error is not None or sw.closed:
                raise SwitchError(f"bridge {sw.label}: connection closed")
            if not answered:
                raise SwitchError(f"bridge {sw.label}: no reply to the barrier behind "
                                  f"{self._count} flow-mods within {timeout or sw.timeout:.0f} s")
        finally:
            sw._pending.pop(self._first + self._count, None)
            sw._forget_refusals(self._first, self._count)


def _yield() -> None:
    hub.sleep(0)


def port_name(port) -> str:
    """os-ken gives port names as bytes."""
    return port.name.decode(errors="replace") if isinstance(port.name, bytes) else port.name

"""Pure diff of desired flows against what a bridge holds.

Flows are content-addressed by cookie (see flows.py), so the difference is
a set difference. `installed` counts flows per cookie: more than one flow
under one of our cookies means somebody installed a stray copy; we delete
the cookie and add the right flow back, in that order, in one ordered
bundle, so traffic never sees the gap.

A plan carries the flow-mod bytes it will send, taken when it is made: the
state may change while a plan of 100,000 flows is on its way, and a plan is
a value.

Other switch objects we own (select groups, meters) are few and are read
back whole, so they are compared by value, by ID: `owned_plan` says what
to add, change and delete, and touches nothing outside what is ours; one
that is right is never sent again. A plan's groups go into the same
ordered bundle as its flows: added before the flows that use them,
deleted after the flows that used them. Meters cannot travel in a bundle
(OVS takes flow-mods and group-mods there), so they are sent first, each
confirmed by a barrier (controller/toobig.py).
"""
from __future__ import annotations

import time
from typing import Callable, Container, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

from lisp_controller.controller.slices import Slices, let_go, sliced, sorted_sliced
from lisp_controller.model.parted import PartedDict
from lisp_controller.model.untracked import untrack, untracked_list
from lisp_controller.pipeline.flows import Group, Meter, group_delete, group_mod, is_our_group
from lisp_controller.openflow.wire import OFPGC_ADD, OFPGC_MODIFY

V = TypeVar("V")


class Owned(NamedTuple):
    """What a bridge needs of one kind of owned object (groups, meters)."""

    add: tuple = ()  # values the bridge lacks
    modify: tuple = ()  # values it holds differently under their ID
    delete: tuple[int, ...] = ()  # IDs of ours it holds and we no longer want

    def __len__(self) -> int:
        return len(self.add) + len(self.modify) + len(self.delete)


NOTHING = Owned()


def owned_plan(installed: Mapping[int, V | None], desired: Mapping[int, V],
               ours: Callable[[int], bool]) -> Owned:
    """`installed` is what the switch holds by ID (None for an object it
    holds in a shape we never make), `desired` what we want by ID; `ours`
    says which IDs are ours to delete. An object held right is not sent
    again, so a reconnect sends nothing for it."""
    add, modify = [], []
    for key, value in sorted(desired.items()):
        if key not in installed:
            add.append(value)
        elif installed[key] != value:
            modify.append(value)
    delete = tuple(sorted(k for k in installed if k not in desired and ours(k)))
    return Owned(tuple(add), tuple(modify), delete)


def group_plan(installed: Mapping[int, Group | None], desired: Mapping[int, Group]) -> Owned:
    """Groups: ours are those in our ID range (flows.is_our_group)."""
    return owned_plan(installed, desired, is_our_group)


class FlowMods:
    """A plan's (cookie, flow-mod) pairs, kept as two lists of the same
    length: a million pairs as tuples were a million objects the cyclic
    collector tracks, which started full collections of 45 to 82 ms each
    while a reconnect's plan was made (docs/performance.rst, "Single
    steps at a million"); ints and bytes in lists it never walks. Reads
    as the sequence of pairs (iteration, `len`, `[i]`)."""

    __slots__ = ("cookies", "data")

    def __init__(self, pairs: Iterable[tuple[int, bytes]] = ()) -> None:
        self.cookies: list[int] = untracked_list()
        self.data: list[bytes] = untracked_list()
        for cookie, data in pairs:
            self.cookies.append(cookie)
            self.data.append(data)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return zip(self.cookies, self.data)

    def __len__(self) -> int:
        return len(self.cookies)

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        return self.cookies[i], self.data[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FlowMods):
            return self.cookies == other.cookies and self.data == other.data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FlowMods({len(self)} flow-mods)"


class Plan(NamedTuple):
    """A plan's flows are lists, nobody changes them, and whoever holds the
    plan last lets go of them in slices (controller/slices.py `let_go`):
    a plan of two million, dropped at once, held the hub 117 to 172 ms."""

    delete: Sequence[int]  # cookies, sent first
    add: Sequence[tuple[int, bytes]]  # (cookie, OFPFC_ADD flow-mod): FlowMods when made here
    groups: Owned = NOTHING  # group-mods around them

    def __bool__(self) -> bool:
        return bool(self.delete or self.add or len(self.groups))

    def __len__(self) -> int:
        return len(self.delete) + len(self.add) + len(self.groups)

    def with_groups(self, groups: Owned) -> "Plan":
        """This plan with `groups` (not `_replace`: __len__ is the plan's size)."""
        return Plan(self.delete, self.add, groups)

    def group_mods(self) -> tuple[tuple[tuple[int, bytes], ...], tuple[tuple[int, bytes], ...]]:
        """(group ID, group-mod) to send before the flows (adds, changes)
        and after them (deletes). A group ID is 32 bits and our cookies
        carry their tag in the top byte of 64: one int names either."""
        g = self.groups
        before = tuple((x.group_id, group_mod(x, OFPGC_ADD)) for x in g.add) + \
            tuple((x.group_id, group_mod(x, OFPGC_MODIFY)) for x in g.modify)
        return before, tuple((gid, group_delete(gid)) for gid in g.delete)


def reconcile(installed: Mapping[int, int], *desired: Mapping[int, bytes], slices: Slices | None = None) -> Plan:
    """`desired` is flow-mods by cookie, in parts (the shared map-cache
    flows and a bridge's own), so the parts need not be merged into one
    dict of a million entries. `slices` lets the hub go between slices of
    cookies (a million take seconds: docs/performance.rst, "A free hub");
    the caller sees to it that nobody changes `installed` or `desired`
    meanwhile."""
    first, rest = desired[0] if desired else {}, desired[1:]
    delete = [c for c, n in sliced(installed.items(), slices)
              if n > 1 or (c not in first and not any(c in part for part in rest))]
    add = FlowMods()
    cookies, flow_mods = add.cookies.append, add.data.append
    for i, part in enumerate(desired):
        earlier = desired[:i]
        for c, data in sliced(part.items(), slices):
            if installed.get(c, 0) != 1 and not (earlier and any(c in e for e in earlier)):
                cookies(c)
                flow_mods(data)
    return Plan(_untracked(sorted_sliced(delete, slices)), add)


def meter_plan(installed: Mapping[int, Meter | None], desired: Mapping[int, Meter]) -> list[tuple[str, Meter]]:
    """("add" | "modify", meter) for each desired meter the bridge lacks or
    holds differently; nothing for one it holds right, so a reconnect
    sends no meter-mod. Meters we do not want are left alone: they are
    someone else's (meters have no ID range of ours, unlike groups)."""
    plan = owned_plan(installed, desired, ours=lambda _: False)
    return [("add", m) for m in plan.add] + [("modify", m) for m in plan.modify]


def catch_up(installed: Mapping[int, int], added: set[int], removed: set[int],
             desired: Mapping[int, bytes], slices: Slices | None = None) -> Plan:
    """The plan for a bridge that was in sync before a change: send what the
    change added and delete what it removed, without diffing the whole
    table (a one-mapping change to 50 bridges of 100,000 flows each).
    `slices` as in `reconcile` (a change of a million held the hub for
    seconds in one step)."""
    delete = [c for c in sliced(removed, slices) if c in installed]
    add = FlowMods()
    cookies, flow_mods = add.cookies.append, add.data.append
    for c in sliced(added, slices):
        if installed.get(c, 0) != 1 and c in desired:
            cookies(c)
            flow_mods(desired[c])
    return Plan(_untracked(sorted_sliced(delete, slices)), add)


def let_go_plan(plan: Plan, pause: Callable[[], None] | None, clock: Callable[[], float] = time.perf_counter) -> None:
    """Let go of the plan's flows a slice at a time (its last holder, once
    it is recorded): see `Plan`."""
    add = plan.add
    for flows in (plan.delete, *((add.cookies, add.data) if isinstance(add, FlowMods) else (add,))):
        if isinstance(flows, list):
            let_go(flows, pause, clock)


def _untracked(items: list) -> list:
    """`items`, hidden from the cyclic collector (model/untracked.py): a
    plan's cookies and (cookie, bytes) pairs cannot reference the list."""
    untrack(items)
    return items


def record_groups(installed: dict[int, Group | None], plan: Owned, failed: Container[int] = frozenset()) -> None:
    """Update `installed` (the bridge's groups by ID) to what it holds after
    `plan` committed, except the groups the switch refused."""
    for g in plan.add + plan.modify:
        if g.group_id not in failed:
            installed[g.group_id] = g
    for gid in plan.delete:
        if gid not in failed:
            installed.pop(gid, None)


def record(installed: dict[int, int], plan: Plan, failed: Container[int] = frozenset(),
           slices: Slices | None = None) -> int:
    """Update `installed` (in place: it may hold a million cookies) to what
    the bridge holds after `plan` committed, except the changes to the
    cookies in `failed`, which the switch refused. Returns the change in
    the number of flows. `slices` as in `reconcile` (a plan of two
    million held the hub 2.3 s in one step); only the caller changes
    `installed` meanwhile."""
    change = 0
    for c in sliced(plan.delete, slices):
        if c not in failed:
            change -= installed.pop(c, 0)
    for c, _ in sliced(plan.add, slices):
        if c not in failed:
            change += 1 - installed.get(c, 0)
            installed[c] = 1
    return change


_ABSENT = object()


class GroupGone:
    """A journal's word that a group is no longer used (see Stream)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "GROUP_GONE"


GROUP_GONE = GroupGone()


class Stream:
    """`catch_up` for a change that arrives in batches while it is being
    made: each batch of edits, in order ((cookie, flow-mod) added, (cookie,
    None) removed; (group ID, Group) wanted, (group ID, GROUP_GONE) no
    longer), gives what to send now; once the bundle committed, `record`
    brings `installed` and `groups` up to date. A flow added and removed
    within the change is sent as such, in order."""

    def __init__(self, installed: dict[int, int], groups: dict[int, Group | None] | None = None):
        self.installed = installed
        self.groups = {} if groups is None else groups
        # Flows per cookie after what was sent so far: a million in a bulk,
        # in parts (model/parted.py; one dict doubled its table in one step
        # of 78 ms), let go of a part at a time by `record`.
        self._now = PartedDict()
        self._groups_now: dict[int, object] = {}  # group by ID after what was sent so far
        self.group_mods = 0  # group-mods among the messages sent

    def step(self, batch: list[tuple[int, object]]) -> list[tuple[int, bytes | None]]:
        """The messages for `batch`: (cookie, flow-mod) to add, (cookie,
        None) to delete, (group ID, group-mod); nothing for an edit the
        bridge already has."""
        parts, size, installed, out = self._now.parts, PartedDict.PARTS, self.installed, []
        for cookie, data in batch:
            if data is not None and type(data) is not bytes:
                self._group_step(cookie, data, out)
                continue
            now = parts[cookie % size]
            count = now.get(cookie)
            if count is None:
                count = installed.get(cookie, 0)
            if data is None:
                if count:
                    out.append((cookie, None))
                now[cookie] = 0
            else:
                if count != 1:
                    out.append((cookie, data))
                now[cookie] = 1
        return out

    def _group_step(self, group_id: int, group: Group | GroupGone, out: list) -> None:
        held = self._groups_now.get(group_id, _ABSENT)
        if held is _ABSENT:
            held = self.groups.get(group_id, _ABSENT)
        if group is GROUP_GONE:
            if held is not _ABSENT:
                out.append((group_id, group_delete(group_id)))
                self.group_mods += 1
            self._groups_now[group_id] = _ABSENT
        elif held != group:
            out.append((group_id, group_mod(group, OFPGC_ADD if held is _ABSENT else OFPGC_MODIFY)))
            self.group_mods += 1
            self._groups_now[group_id] = group

    def record(self, pause: Callable[[], None] | None = None) -> None:
        """Bring `installed` and `groups` up to what the bridge holds now;
        `pause` lets the hub go between slices (a million cookies take
        half a second: controller/slices.py). Nobody else writes them."""
        slices = Slices(pause)
        installed, parts = self.installed, self._now.parts
        for i, part in enumerate(parts):
            parts[i] = {}  # this part goes when the next is taken: a part at a time
            for cookie, count in part.items():
                if count:
                    installed[cookie] = 1
                else:
                    installed.pop(cookie, None)
                if slices.due():
                    slices.pause()
        for group_id, group in self._groups_now.items():
            if group is _ABSENT:
                self.groups.pop(group_id, None)
            else:
                self.groups[group_id] = group

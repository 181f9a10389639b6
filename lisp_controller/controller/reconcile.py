"""Pure diff of desired flows against what a bridge holds.

Flows are content-addressed by cookie (see flows.py), so the difference is
a set difference. `installed` counts flows per cookie: more than one flow
under one of our cookies means somebody installed a stray copy; we delete
the cookie and add the right flow back, in that order, in one ordered
bundle, so traffic never sees the gap.

A plan carries the flow-mod bytes it will send, taken when it is made: the
state may change while a plan of 100,000 flows is on its way, and a plan is
a value.
"""
from __future__ import annotations

from typing import Container, Mapping, NamedTuple

from lisp_controller.pipeline.flows import Meter


class Plan(NamedTuple):
    delete: tuple[int, ...]  # cookies, sent first
    add: tuple[tuple[int, bytes], ...]  # (cookie, OFPFC_ADD flow-mod)

    def __bool__(self) -> bool:
        return bool(self.delete or self.add)

    def __len__(self) -> int:
        return len(self.delete) + len(self.add)


def reconcile(installed: Mapping[int, int], *desired: Mapping[int, bytes]) -> Plan:
    """`desired` is flow-mods by cookie, in parts (the shared map-cache
    flows and a bridge's own), so the parts need not be merged into one
    dict of a million entries."""
    delete = [c for c, n in installed.items() if n > 1 or not any(c in part for part in desired)]
    add = [(c, data) for i, part in enumerate(desired) for c, data in part.items()
           if installed.get(c, 0) != 1 and not any(c in earlier for earlier in desired[:i])]
    return Plan(tuple(sorted(delete)), tuple(add))


def meter_plan(installed: Mapping[int, Meter | None], desired: Mapping[int, Meter]) -> list[tuple[str, Meter]]:
    """("add" | "modify", meter) for each desired meter the bridge lacks or
    holds differently; nothing for one it holds right, so a reconnect
    sends no meter-mod. Meters we do not want are left alone: they are
    someone else's."""
    plan = []
    for meter_id, meter in sorted(desired.items()):
        if meter_id not in installed:
            plan.append(("add", meter))
        elif installed[meter_id] != meter:
            plan.append(("modify", meter))
    return plan


def catch_up(installed: Mapping[int, int], added: set[int], removed: set[int],
             desired: Mapping[int, bytes]) -> Plan:
    """The plan for a bridge that was in sync before a change: send what the
    change added and delete what it removed, without diffing the whole
    table (a one-mapping change to 50 bridges of 100,000 flows each)."""
    delete = tuple(sorted(c for c in removed if c in installed))
    add = tuple((c, desired[c]) for c in added if installed.get(c, 0) != 1 and c in desired)
    return Plan(delete, add)


def record(installed: dict[int, int], plan: Plan, failed: Container[int] = frozenset()) -> int:
    """Update `installed` (in place: it may hold a million cookies) to what
    the bridge holds after `plan` committed, except the changes to the
    cookies in `failed`, which the switch refused. Returns the change in
    the number of flows."""
    change = 0
    for c in plan.delete:
        if c not in failed:
            change -= installed.pop(c, 0)
    for c, _ in plan.add:
        if c not in failed:
            change += 1 - installed.get(c, 0)
            installed[c] = 1
    return change


class Stream:
    """`catch_up` for a change that arrives in batches while it is being
    made: each batch of flow edits, in order ((cookie, flow-mod) added,
    (cookie, None) removed), gives what to send now; once the bundle
    committed, `record` brings `installed` up to date. A flow added and
    removed within the change is sent as such, in order."""

    def __init__(self, installed: dict[int, int]):
        self.installed = installed
        self._now: dict[int, int] = {}  # flows per cookie after what was sent so far

    def step(self, batch: list[tuple[int, bytes | None]]) -> list[tuple[int, bytes | None]]:
        """The messages for `batch`: (cookie, flow-mod) to add, (cookie,
        None) to delete; nothing for an edit the bridge already has."""
        now, installed, out = self._now, self.installed, []
        for cookie, data in batch:
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

    def record(self) -> None:
        for cookie, count in self._now.items():
            if count:
                self.installed[cookie] = 1
            else:
                self.installed.pop(cookie, None)

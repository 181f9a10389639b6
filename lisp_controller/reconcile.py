"""Pure diff of desired flows against what a bridge holds.

Flows are content-addressed by cookie (see flows.py), so the difference is
a set difference. `installed` counts flows per cookie: more than one flow
under one of our cookies means somebody installed a stray copy; we delete
the cookie and add the right flow back, in that order, in one ordered
bundle, so traffic never sees the gap.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

from .flows import Flow


class Plan(NamedTuple):
    delete: tuple[int, ...]  # cookies, sent first
    add: tuple[tuple[int, Flow], ...]

    def __bool__(self) -> bool:
        return bool(self.delete or self.add)

    def __len__(self) -> int:
        return len(self.delete) + len(self.add)


def reconcile(desired: Mapping[int, Flow], installed: Mapping[int, int]) -> Plan:
    delete = [c for c, n in installed.items() if c not in desired or n > 1]
    add = [(c, f) for c, f in desired.items() if installed.get(c, 0) != 1]
    return Plan(tuple(sorted(delete)), tuple(add))


def applied(installed: Mapping[int, int], plan: Plan, failed: set[int] = frozenset()) -> dict[int, int]:
    """What the bridge holds after `plan` committed, except the adds whose
    cookies are in `failed`."""
    gone = set(plan.delete)
    out = {c: n for c, n in installed.items() if c not in gone}
    for c, _ in plan.add:
        if c not in failed:
            out[c] = 1
    return out

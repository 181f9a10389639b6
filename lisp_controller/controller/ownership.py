"""Which controller instance is master of which bridge: the plan, pure.

With several controllers on one etcd store (docs/etcd.rst, "Bridge
ownership"), every bridge connects to every instance and exactly one of
them, the owner, programs it. etcd holds the facts: the instances alive
(each a key on its lease, naming the bridges connected to it) and one
owner key per bridge (on its owner's lease, so it vanishes with its
owner). Each instance reads them and, with this module, decides its own
moves; etcd's create-if-absent transaction settles any race, so two
instances planning from the same snapshot never both win a bridge.

The rules, the same for every instance, so their plans agree:

- An instance owns only bridges connected to it: it releases one whose
  connection it lost.
- Bridges without a live owner are dealt out in order, each to the
  connected instance that masters the fewest bridges at that point
  (ties broken by a hash of bridge and instance, so bridges spread
  rather than pile on the smallest name).
  If that instance does not take it within `patience` (it is stuck, or
  does not see the bridge yet), any connected instance may.
- An instance that masters at least two more bridges than another
  instance connected to one of them hands one over (releases it; the
  other, now the best candidate, takes it). One per round: the spread
  converges without bridges changing hands twice.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Snapshot:
    """What etcd says at one revision."""

    instances: dict[str, frozenset[int]]  # live instance -> the datapaths connected to it
    owners: dict[int, str]  # datapath -> the instance whose owner key it has


@dataclass(frozen=True)
class Moves:
    """One instance's decisions for one round: owner keys to create and to delete."""

    claim: tuple[int, ...] = ()
    release: tuple[int, ...] = ()
    reasons: dict[int, str] = field(default_factory=dict)  # datapath -> why it moves, for the log

    def __bool__(self) -> bool:
        return bool(self.claim or self.release)


def _tie(datapath: int, instance: str) -> bytes:
    return hashlib.sha256(f"{datapath:016x}/{instance}".encode()).digest()


def mastered(snapshot: Snapshot) -> dict[str, int]:
    """Bridges each live instance masters (0 for those that master none)."""
    counts = dict.fromkeys(snapshot.instances, 0)
    for owner in snapshot.owners.values():
        if owner in counts:
            counts[owner] += 1
    return counts


def best_candidate(datapath: int, snapshot: Snapshot, counts: dict[str, int]) -> str | None:
    """The live instance connected to `datapath` that should take it."""
    candidates = [i for i, dps in snapshot.instances.items() if datapath in dps]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (counts[i], _tie(datapath, i)))


def plan(me: str, snapshot: Snapshot, connected: frozenset[int] | set[int],
         overdue: frozenset[int] | set[int] = frozenset()) -> Moves:
    """What instance `me` does now. `connected`: the bridges connected to
    it (its own view wins over what etcd last heard from it); `overdue`:
    bridges without an owner for longer than the patience, which it takes
    if connected, whoever the best candidate is."""
    view = Snapshot({**snapshot.instances, me: frozenset(connected)}, snapshot.owners)
    counts = mastered(view)
    mine = sorted(d for d, owner in view.owners.items() if owner == me)
    release, reasons = [], {}
    for d in mine:
        if d not in connected:
            release.append(d)
            reasons[d] = "its connection to this instance is gone"
            counts[me] -= 1
    if not release:
        handover = _handover(me, view, counts, [d for d in mine if d in connected])
        if handover is not None:
            d, taker = handover
            release.append(d)
            reasons[d] = f"handed over to {taker}, which masters fewer bridges"
            counts[me] -= 1
    # Every free bridge is dealt out, in order, to its best candidate, as
    # every instance deals them from the same snapshot: each takes its
    # share in one round.
    claim = []
    seen = {d for dps in view.instances.values() for d in dps}
    free = sorted(d for d in seen if view.owners.get(d) not in view.instances and d not in release)
    for d in free:
        best = best_candidate(d, view, counts)
        if best == me or (d in overdue and d in connected):
            claim.append(d)
            reasons[d] = "no live master" + (" for too long" if best != me else "")
            counts[me] += 1
        elif best is not None:
            counts[best] += 1
    return Moves(tuple(claim), tuple(release), reasons)


def _handover(me: str, view: Snapshot, counts: dict[str, int], mine: list[int]) -> tuple[int, str] | None:
    """The bridge to hand over, and to whom: the one whose best other taker
    masters the fewest, if that is at least two fewer than `me`."""
    best = None
    for d in mine:
        others = [i for i, dps in view.instances.items() if i != me and d in dps]
        if not others:
            continue
        taker = min(others, key=lambda i: (counts[i], _tie(d, i)))
        if counts[taker] + 1 < counts[me] and (best is None or counts[taker] < counts[best[1]]):
            best = (d, taker)
    return best

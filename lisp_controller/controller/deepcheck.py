"""A bridge session's deep check: every flow of ours read back whole and
compared with the flow-mod its cookie names, and our groups read back
(docs/reliability.rst); and the names of flows and groups in logs and
errors.

A session (controller/session.py) runs it from its sync every
`reconcile_interval`, on its own greenthread; at a million flows it takes
seconds, so all of it goes in slices that let the hub go between them
(controller/slices.py), and no step goes over a whole million-entry dict
at once: the desired flows are copied and the counts kept in parts, and
the counts read before are let go of a part at a time (model/parted.py;
docs/performance.rst, "A free hub").
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Mapping

from lisp_controller.controller.slices import PARTS_AT_ONCE, Slices, let_go, ms_since, sliced
from lisp_controller.model.parted import PartedDict
from lisp_controller.openflow import verify
from lisp_controller.pipeline.compiler import Compiled
from lisp_controller.pipeline.flows import Flow, Group, render, render_group

if TYPE_CHECKING:
    from lisp_controller.controller.session import BridgeSession

LOG = logging.getLogger("lisp_controller")


def flow_namer(shared: Mapping[int, Flow], local: Mapping[int, Flow],
               groups: Mapping[int, Group]) -> Callable[[int], str]:
    """A cookie's flow, or a group ID's group, in ovs-ofctl syntax, for
    logs and errors."""
    def name(key: int) -> str:
        group = groups.get(key)  # group IDs and our cookies never meet (Plan.group_mods)
        if group is not None:
            return render_group(group)
        flow = local.get(key) or shared.get(key)
        return render(flow) if flow is not None else f"cookie={key:#x}"
    return name


def expected_flows(shared: PartedDict, local: Mapping[int, bytes], slices: Slices) -> PartedDict:
    """The flow-mods a deep check compares against: the shared ones and
    the bridge's own, copied (it reads the switch outside the change lock,
    and the state may move meanwhile) a part at a time, letting the hub go
    between `slices` of parts (the caller holds the change lock: nobody
    changes `shared` meanwhile). One copy of a million held the hub 40 to
    54 ms."""
    expected = PartedDict()
    for _ in sliced(expected.copying(shared), slices):
        pass
    expected.update(local)
    return expected


def deep_check(session: "BridgeSession", compiled: Compiled, expected: Mapping[int, bytes]) -> dict[int, bytes]:
    """Read every flow of ours and count one whose content differs from
    its cookie's flow twice, so reconcile replaces it. Returns the learned
    flows the xTR sent ahead of their commit, as they are after the read:
    the bridge may hold them and should (lisp/installer.py); they are not drift.
    Their commit waits for this session's sync, so none of them is
    committed and dropped from the xTR's list meanwhile.

    Drift is what differs from what this session last left on the bridge
    (`installed`), not from `expected`: the state may have moved since the
    last sync, and the difference that makes is the sync about to be
    sent, not a repair. Only this greenthread writes to the bridge, so
    nothing of ours is in flight while it reads."""
    started = time.monotonic()
    st, app = session.status, session.app
    left = session.installed
    # Split as they are compared, a slice at a time: at 1,000,000 flows
    # the two take seconds (docs/performance.rst, "A free hub").
    # `expected` is a copy and nobody else writes to the bridge, so a
    # change made while this yields cannot make it see drift.
    cut = session.slices()
    verdict = verify.installed_counts(sliced(session.switch.flow_entries(), cut), expected)
    session.installed = verdict.counts
    st.last_verify = time.time()
    st.last_verify_ms = ms_since(started)
    if verdict.changed:
        st.flows_repaired += len(verdict.changed)
        app.metrics.inc("lisp_flows_repaired_total", len(verdict.changed))
        name = flow_namer(app.state.shared, compiled.flows, {})
        LOG.warning("bridge %s: %d flows of ours were changed on the switch (by hand?); "
                    "replacing them with: %s", session.label, len(verdict.changed),
                    "; ".join(name(c) for c in verdict.changed[:5]))
    ahead = app.flows_ahead()
    stray = sum(1 for c in sliced(verdict.counts, cut) if c not in left and c not in ahead)
    gone = sum(1 for c in sliced(left, cut) if c not in verdict.counts)
    if verdict.duplicates or stray or gone:
        LOG.warning("bridge %s: deep check found %d duplicate, %d unwanted and %d missing "
                    "flows under our cookie; repairing", session.label, verdict.duplicates,
                    stray, gone)
    let_go(left, session.pause, session.slice_clock)  # the counts before: this session's alone
    return ahead


def deep_check_groups(session: "BridgeSession", expected: Mapping[int, Group]) -> None:
    """Read our groups back whole: one changed by hand is replaced, one
    deleted is added back, one we no longer use is deleted."""
    session.installed_groups = held = session.switch.groups()
    changed = [gid for gid, g in held.items() if gid in expected and g != expected[gid]]
    if changed:
        session.status.flows_repaired += len(changed)
        session.app.metrics.inc("lisp_flows_repaired_total", len(changed))
        LOG.warning("bridge %s: %d groups of ours were changed on the switch (by hand?); "
                    "replacing them with: %s", session.label, len(changed),
                    "; ".join(render_group(expected[gid]) for gid in changed[:5]))


def parts_slices(session: "BridgeSession") -> Slices:
    """Slices of a `PartedDict`'s parts (each a C-level step over about
    4,000 entries of a million)."""
    return Slices(session.pause, most=PARTS_AT_ONCE, clock=session.slice_clock)

"""What the API and logs say about one bridge: its session's status
(controller/session.py keeps it up to date; `/v1/datapaths` shows it,
`datapath_view`) and the words its log lines share."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from lisp_controller.controller.roles import EQUAL
from lisp_controller.model import Bridge

LOG = logging.getLogger("lisp_controller")


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


def report_missing_ports(status: BridgeStatus, missing: tuple[str, ...], said: dict[str, tuple[str, ...]],
                         label: str) -> None:
    """A configured port the bridge lacks is a condition that lasts:
    said when it starts, when the set changes and when it ends, not on
    every sync (and not again on a reconnect: `said`, the app's, remembers)."""
    status.missing_ports = missing
    before = said.get(status.bridge.label, ())
    if missing == before:
        return
    said[status.bridge.label] = missing
    if missing:
        LOG.warning("bridge %s: configured ports not on the bridge: %s (their flows are left out)",
                    label, ", ".join(missing))
    else:
        LOG.info("bridge %s: every configured port is on the bridge now (%s was missing)",
                 label, ", ".join(before))


def and_groups(n: int) -> str:
    """" and 2 groups" for a log line about flows; nothing without groups."""
    return f" and {n} group{'' if n == 1 else 's'}" if n else ""


def groups_text(plan) -> str:
    """What a sync did to groups, for its log line; nothing if nothing."""
    if not len(plan):
        return ""
    return f"; groups: {len(plan.add)} added, {len(plan.modify)} changed, {len(plan.delete)} removed"


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def datapath_view(bridge: Bridge | None, st: BridgeStatus | None, membership=None) -> dict:
    """One entry of ``/v1/datapaths``: a configured bridge (``bridge``), a
    connected datapath (``st``, its session's status), or both; with
    several instances, which one masters it (``membership``)."""
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
        "groups_desired": st.groups_desired if st else None,
        "groups_installed": st.groups_installed if st else None,
        "group_mods_sent": st.group_mods_sent if st else 0,
        "last_reconcile": _iso(st.last_reconcile) if st else None,
        "last_reconcile_ms": round(st.last_reconcile_ms, 1) if st and st.last_reconcile_ms is not None else None,
        "verified_ms": st.verified_ms if st else None,
        "last_verify": _iso(st.last_verify) if st else None,
        "last_verify_ms": st.last_verify_ms if st else None,
        "flows_repaired": st.flows_repaired if st else 0,
        "flows_rejected": st.last_rejected if st else 0,
        "errors": list(st.errors) if st else [],
        "degraded": bool(st and st.degraded),
        # OpenFlow role of this instance's connection, and the instance etcd
        # names master (docs/etcd.rst); alone: equal, and no master named.
        "role": st.role if st else None,
        "generation": st.generation if st else None,
        "master": membership.master_of(dpid) if membership is not None and dpid is not None else None,
    }

"""One bridge's OpenFlow role, when several instances share an etcd store.

etcd names one master per bridge (store/membership.py, with the pure
decisions of controller/ownership.py); the switch must agree before that
instance writes, and every other instance must hold the bridge as SLAVE
without disturbing the master (docs/etcd.rst, "Bridge ownership" and
"Generation IDs"). This module is that agreement, for one bridge, on the
bridge session's greenthread (controller/session.py). The session:

- runs `follow` as its loop while the connection lives: SLAVE until etcd
  gives the bridge to this instance, then MASTER with etcd's generation
  ID and the session's `take_over` (read the bridge, serve it) until
  deposed;
- calls `assert_master` before each write (local checks, no round trip)
  and `check_wanted` whenever it wakes;
- is told etcd's word by `set_master` (the app, on a membership change).

Without an etcd store there is no BridgeRole: the only controller is
EQUAL on every bridge and writes.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.switch import Switch

if TYPE_CHECKING:
    from os_ken.lib import hub

    from lisp_controller.controller.bridgestatus import BridgeStatus
    from lisp_controller.store.membership import Membership

LOG = logging.getLogger("lisp_controller")

# Roles as the switch holds them (OpenFlow 1.3's OFPCR_ROLE_*), by name.
MASTER, SLAVE, EQUAL = "master", "slave", "equal"


class Deposed(Exception):
    """This instance may no longer write to the bridge: etcd gave it to
    another instance, this instance's lease ran out, or the switch itself
    refused (a newer master claimed it)."""


class BridgeRole:
    """This instance's role on one bridge. `wanted` is the generation etcd
    gave this instance the bridge with, None while another instance (or
    none) masters it; `status.role` and `status.generation` are what the
    switch took. `dirty` is the session's wake-up event, `label` names the
    bridge for logs, `record_error` keeps an error in the bridge's status."""

    def __init__(self, membership: "Membership", metrics, switch: Switch, status: "BridgeStatus",
                 dirty: "hub.Event", label: Callable[[], str], record_error: Callable[[str], None]):
        self.membership, self.metrics, self.switch, self.status = membership, metrics, switch, status
        self.dirty, self._label, self._record_error = dirty, label, record_error
        self.wanted: int | None = None

    @property
    def label(self) -> str:
        return self._label()

    def set_master(self, generation: int | None) -> None:
        """etcd gave this instance the bridge with `generation` (None: took
        it away). The session's greenthread makes the switch agree."""
        if generation != self.wanted:
            self.wanted = generation
            self.dirty.set()

    # -- the session's loop ------------------------------------------------------------------
    def follow(self, take_over: Callable[[int], None], forget: Callable[[], None]) -> None:
        """Hold the bridge as SLAVE until etcd makes this instance its
        master; then claim MASTER with etcd's generation ID and run
        `take_over(generation)` (read the bridge again: another master
        wrote to it; serve it) until deposed, when `forget` drops what
        the session trusted of the bridge. Returns only when the
        connection goes."""
        while not self.switch.closed:
            generation = self.wanted
            if generation is None:
                self._become_slave()
                self._wait_for_role(None)
                continue
            try:
                self._become_master(generation)
                take_over(generation)
            except Deposed as e:
                forget()
                self._deposed(generation, str(e))
            except SwitchError as e:
                if not e.not_master or self.switch.closed:
                    raise
                forget()
                self._deposed(generation, str(e).removeprefix(f"bridge {self.label}: ")
                              + " (a newer master claimed it)")

    def check_wanted(self) -> None:
        """Deposed if etcd changed its mind since the switch took this
        instance as master (the session checks on every wake-up)."""
        if self.wanted != self.status.generation:
            raise Deposed(f"etcd took the bridge from this instance (generation {self.status.generation})"
                          if self.wanted is None else f"etcd gave it again with generation {self.wanted}")

    def assert_master(self) -> None:
        """Before a write: etcd still gives the bridge to this instance
        with the generation the switch took, and the lease is live; no
        round trip. The switch guards the rest by itself: a newer master's
        claim turns this connection into SLAVE, whose flow-mods, group-mods,
        meter-mods and bundles it refuses (OFPBRC_IS_SLAVE), so a master
        deposed while it was frozen learns it from the refusal of its
        first write, and nothing of it is applied (docs/etcd.rst,
        "Generation IDs")."""
        generation = self.status.generation
        if generation is None:
            raise Deposed("this instance is not master of the bridge")
        self._check_lease(generation)

    # -- becoming what etcd says ---------------------------------------------------------------
    def _wait_for_role(self, current: int | None) -> None:
        """Until etcd changes its mind about this bridge (or the connection
        goes); port status keeps the ports current meanwhile."""
        while not self.switch.closed and self.wanted == current:
            self.dirty.wait()
            self.dirty.clear()

    def _deposed(self, generation: int, why: str) -> None:
        """No longer master: stop writing, and say why. If etcd still
        names this instance (its lease ran out unnoticed, or the switch
        knows a newer master), the membership learns it and gives the
        bridge up; the session waits for etcd's next word."""
        st = self.status
        if self.wanted != generation:  # SLAVE next (or MASTER again, with the new generation)
            LOG.info("bridge %s: instance %s hands it over: %s", self.label, self.membership.me, why)
            return
        st.role, st.generation = "deposed", None
        LOG.warning("bridge %s: instance %s stops writing to it: %s", self.label, self.membership.me, why)
        self._record_error(f"not master any more: {why}")
        self.metrics.inc("lisp_role_changes_total", bridge=st.bridge.label, role="deposed")
        self.membership.refused(st.datapath_id, generation)
        self._wait_for_role(generation)

    def _become_slave(self) -> None:
        """SLAVE with the switch's own generation ID (asked first): a slave
        must not move the generation on, or the real master's next
        request would be refused as stale. A master claiming meanwhile
        makes ours stale: ask again."""
        st = self.status
        if st.role == SLAVE:
            return
        for _ in range(5):
            _, current = self.switch.role_request(ofp.OFPCR_ROLE_NOCHANGE)
            try:
                self.switch.role_request(ofp.OFPCR_ROLE_SLAVE, current)
            except SwitchError as e:
                if e.not_master:
                    continue
                raise
            self._role_is(SLAVE, None, "another instance masters it" if self.membership.master_of(
                st.datapath_id) else "no instance masters it yet")
            return
        raise SwitchError(f"bridge {self.label}: the switch's generation ID kept moving; SLAVE not taken")

    def _become_master(self, generation: int) -> None:
        """MASTER with etcd's generation ID: the switch demotes whichever
        connection was master, and refuses (OFPRRFC_STALE) if it has seen
        a newer generation: then a newer master exists and this instance
        is the stale one."""
        self._check_lease(generation)
        try:
            self.switch.role_request(ofp.OFPCR_ROLE_MASTER, generation)
        except SwitchError as e:
            if e.not_master:
                raise Deposed(f"the switch refused MASTER with generation {generation}: "
                              f"{_error_name(e)} (a newer master claimed it)") from None
            raise
        self._role_is(MASTER, generation, "etcd gave it to this instance")

    def _check_lease(self, generation: int | None) -> None:
        """Deposed unless etcd still gives this bridge to this instance with
        `generation` and the instance's lease is live (docs/etcd.rst). The
        lease check can be turned off by a test (lab/serve.py) to show the
        switch refusing a stale master by itself."""
        if self.wanted != generation or generation is None:
            raise Deposed(f"etcd no longer gives the bridge to this instance with generation {generation}")
        problem = self.membership.lease_problem() if self.membership.guard else None
        if problem:
            raise Deposed(problem)

    def _role_is(self, role: str, generation: int | None, why: str) -> None:
        st = self.status
        if st.role == role and st.generation == generation:
            return
        LOG.info("bridge %s: instance %s is %s%s (%s; was %s)", self.label, self.membership.me,
                 role.upper(), f" with generation {generation}" if generation is not None else "", why,
                 st.role.upper())
        st.role, st.generation = role, generation
        st.role_changes += 1
        self.metrics.inc("lisp_role_changes_total", bridge=st.bridge.label, role=role)


def _error_name(error: SwitchError) -> str:
    """The switch's words for a refusal: "OFPRRFC_STALE"."""
    return str(error).rsplit("/", 1)[-1]

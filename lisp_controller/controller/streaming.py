"""A big change streamed into a bridge while the state is still making it
(docs/performance.rst): the state puts its flow edits in a session's feed
in batches as it makes them, and the session sends each batch into an
open bundle, so the switch parses one batch while the controller makes
the next (two cores), and commits once all of it is in.

Only a session that is idle and holds exactly the current state takes a
change this way (`streamable`); any other catches up by its next sync.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from os_ken.lib import hub

from lisp_controller.controller.reconcile import Stream
from lisp_controller.controller.roles import Deposed
from lisp_controller.controller.slices import ms_since
from lisp_controller.openflow.encode import encode_delete

if TYPE_CHECKING:
    from lisp_controller.controller.session import BridgeSession

LOG = logging.getLogger("lisp_controller")
ABORT = object()  # a streamed change failed midway: discard the bundle


def streamable(session: "BridgeSession") -> bool:
    """True if this bridge can take the change about to be made as a
    stream: it is idle and holds exactly the current state, so the
    change's own flow edits are all it needs (called under the change
    lock, before the change)."""
    st, state = session.status, session.app.state
    bridge = state.bridge(st.bridge.label) if st.bridge is not None else None
    return (session.idle and not session.dirty.is_set() and session.feed is None and not session.switch.closed
            and bridge is not None and bridge is session.synced_bridge and not bridge.proxy_arp
            and st.ports == session.synced_ports and st.synced_generation == state.generation)


def open_feed(session: "BridgeSession") -> "hub.Queue":
    """Open a feed for the change about to be made: the state puts its
    flow edits in batches as it makes them, then END (or ABORT)."""
    session.feed = hub.Queue()
    session.mark_dirty()
    return session.feed


def take_stream(session: "BridgeSession", feed: "hub.Queue") -> None:
    """Send the change coming through `feed` into an open bundle as it
    comes, and commit once all of it is in."""
    st, app = session.status, session.app
    started = time.monotonic()
    session.take_noted()
    stream = Stream(session.installed, session.installed_groups)
    bundle = session.switch.open_bundle()  # anonymous: the cheapest messages
    try:
        while True:
            batch = feed.get()
            if batch is ABORT:
                bundle.discard()
                session.synced_bridge = None  # the next sync is a full one
                session.mark_dirty()
                return
            if isinstance(batch, tuple):  # END
                generation = batch[1]
                break
            bundle.add_many(((c, data if data is not None else encode_delete(c))
                             for c, data in stream.step(batch)), batch=True)
        mark = time.monotonic()
        try:
            session.assert_master()
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
                    "checking the bridge and sending it again as a whole", session.label)
        session.sync(deep=True)
        return
    sent = bundle.count - stream.group_mods
    stream.record(pause=lambda: hub.sleep(0))
    st.flows_installed = sum(session.installed.values())
    st.groups_installed = len(session.installed_groups)
    st.group_mods_sent += stream.group_mods
    app.metrics.inc("lisp_group_mods_sent_total", stream.group_mods)
    st.flows_desired = session.local_flows + len(app.state.shared)
    st.flow_mods_sent += sent
    app.metrics.inc("lisp_flow_mods_sent_total", sent)
    st.last_stages = {"stream_ms": ms_since(started), "commit_ms": ms_since(mark),
                      "send_wait_ms": round(bundle.waited * 1000, 1)}
    st.last_reconcile = time.time()
    st.last_reconcile_ms = ms_since(started)
    st.last_rejected = 0
    st.synced_generation = generation
    LOG.info("bridge %s: %d flow-mods streamed while the change was made, committed in %.0f ms, "
             "confirmed by barrier", session.label, sent, st.last_stages["commit_ms"])
    app.metrics.observe_sync(st.bridge.label, st.last_reconcile_ms / 1000)
    session.synced()

"""The mapping system of one controller: the control listener with the
Map-Server and Map-Resolver plugged in, and the registrations handed to the
controller's state (docs/control-plane.rst).

Registrations become ``Change(learn=..., forget=...)`` committed through the
application like any API change, but in batches and without waiting for the
bridges: a Map-Register is answered at once, and the registrations that
arrived in the meantime reach the map-cache together a few milliseconds
later. Expiry needs nothing from here: the state forgets a learned mapping
when its expiry time passes, and the Map-Server drops its registration at
the same moment by the same clock.
"""
from __future__ import annotations

import logging
import time

from os_ken.lib import hub

from lisp_controller.controller.state import Change
from lisp_controller.lisp.common_request import Query, decode_request
from lisp_controller.lisp.config import ALGORITHM_NAMES, LispSettings
from lisp_controller.lisp.listener import ControlListener
from lisp_controller.lisp.listener_thread import ListenerThread
from lisp_controller.lisp.mapserver import Key, MapResolver, MapServer, Registration, Send, Source
from lisp_controller.lisp.messages import EncapsulatedControlMessage, MapRegister
from lisp_controller.lisp.mirror import ResolverMirror
from lisp_controller.lisp.negative import PrefixOrder
from lisp_controller.model import Mapping

LOG = logging.getLogger("lisp_controller.lisp")
BATCH_DELAY = 0.005    # seconds registrations gather before one commit
EXPIRY_INTERVAL = 1.0


class MappingSystem:
    """Map-Server and Map-Resolver on the control listener of ``app`` (a
    ``LispControllerApp``: its state, ``apply_change`` and metrics)."""

    def __init__(self, app, settings: LispSettings):
        self.app, self.settings = app, settings
        state = app.state
        self.server = MapServer(settings.sites, state.clock)
        self.order = PrefixOrder()
        state.cache.watch(self.order)
        self.metrics = app.metrics   # its names: api/metrics.py (COUNTERS, CONTROL_HISTOGRAMS)
        self.listener = ControlListener(settings.listen, settings.port, self.metrics, settings.max_sources)
        self.resolver = MapResolver(state.cache, self.order, self.server, settings, self.listener.family)
        # The common Map-Requests are answered on the listener's thread from a
        # copy of what the resolver reads, fed by the hub (lisp/mirror.py).
        self.thread: ListenerThread | None = None
        self.mirror: ResolverMirror | None = None
        self._pending: dict[Key, Mapping | None] = {}   # learned (or None: forget) since the last commit
        self._wake = hub.Event()

    def bind(self) -> None:
        """Open the socket now, so a bad address stops the start (OSError)."""
        self.listener.bind()

    def start(self) -> list:
        """The listener's thread and the greenthreads of the mapping system."""
        self.thread = ListenerThread(self.listener)
        self.mirror = ResolverMirror(self.app.state.cache, self.server, self.settings, self.listener.family,
                                     self.thread.counts.inc)
        self.thread.before_batch = self.mirror.catch_up
        self.listener.on(MapRegister, self._register, self._register_refused, self.settings.register_rate,
                         "lisp_map_register_seconds")
        self.listener.on(EncapsulatedControlMessage, self._request, self._request_refused,
                         self.settings.request_rate, "lisp_map_request_seconds", decode_request,
                         alone=self.mirror.answer)
        return [hub.spawn(self.thread.serve), hub.spawn(self._apply_loop), hub.spawn(self._expire_loop)]

    def stop(self) -> None:
        """Stop the listener's thread and close its socket (also done when
        its greenthread is killed)."""
        if self.thread is not None:
            self.thread.stop()

    # -- handlers (called by the listener, one datagram each) --------------------
    def _register(self, message: MapRegister, raw: bytes, source: Source) -> list[Send]:
        accepted = self.server.register(raw, message, source)
        for m in accepted.learn:
            self._pending[m.key] = m
            self._registered(m.key)
        for key in accepted.forget:
            self._pending[key] = None
            self._registered(key)
        self._wake.set()
        self.metrics.inc("lisp_map_registers_accepted_total")
        LOG.debug("site %s: Map-Register from %s:%d: %d registered, %d withdrawn", accepted.site, *source,
                  len(accepted.learn), len(accepted.forget))
        return [(accepted.notify, source)] if accepted.notify is not None else []

    def _registered(self, key: Key) -> None:
        """Tell the listener thread's copy what the Map-Server holds for ``key`` now."""
        if self.mirror is not None:
            self.mirror.registered(key, self.server.registrations.get(key))

    def _register_refused(self, reason: str, source: Source) -> None:
        self.metrics.inc("lisp_map_registers_refused_total", reason=reason)

    def _request(self, message: EncapsulatedControlMessage | Query, raw: bytes, source: Source) -> list[Send]:
        resolution = self.resolver.resolve(message)
        self.metrics.inc("lisp_map_requests_total", outcome=resolution.outcome)
        return resolution.sends

    def _request_refused(self, reason: str, source: Source) -> None:
        self.metrics.inc("lisp_map_requests_refused_total", reason=reason)

    # -- into the controller's state ---------------------------------------------
    def _apply_loop(self) -> None:
        while True:
            self._wake.wait()
            hub.sleep(BATCH_DELAY)   # let a burst of registrations join one commit
            self._wake.clear()
            pending, self._pending = self._pending, {}
            if not pending:
                continue
            change = Change(learn=[m for m in pending.values() if m is not None],
                            forget=[k for k, m in pending.items() if m is None])
            try:
                self.app.apply_change(change, wait=0)
            except Exception:   # the next registrations try again; say what went wrong now
                LOG.exception("registrations could not be applied (%d learned, %d forgotten)",
                              len(change.learn), len(change.forget))

    def _expire_loop(self) -> None:
        while True:
            hub.sleep(EXPIRY_INTERVAL)
            try:
                gone = self.server.expire()
            except Exception:
                LOG.exception("registration expiry failed")
                continue
            if gone:
                LOG.info("%d registrations timed out: %s", len(gone),
                         ", ".join(f"{iid}:{eid}" for iid, eid in gone[:10]))
                for key in gone:   # the state forgets them by itself; this makes sure
                    self._pending.setdefault(key, None)
                    self._registered(key)
                self._wake.set()

    # -- views for the API ---------------------------------------------------------
    def sites(self) -> list[dict]:
        return [self.site(name, registrations=False) for name in self.server.sites]

    def site(self, name: str, registrations: bool = True) -> dict | None:
        site = self.server.sites.get(name)
        if site is None:
            return None
        view = {"name": site.name, "proxy_reply": site.proxy_reply, "max_registrations": site.max_registrations,
                "keys": [{"key_id": k.key_id, "alg": ALGORITHM_NAMES[k.alg_id]} for k in site.keys],
                "prefixes": [{"iid": p.iid, "eid": str(p.eid), "accept_more_specifics": p.accept_more_specifics}
                             for p in site.prefixes],
                "registered": self.server.counts[site.name]}
        if registrations:
            now = self.app.state.clock()
            view["registrations"] = [self._registration_view(r, now) for r in self.server.of_site(name)]
        return view

    def _registration_view(self, r: Registration, now: float) -> dict:
        m = r.mapping
        owner = self.app.state.owner(m.key)
        return {"iid": m.iid, "eid": str(m.eid),
                "rlocs": [{"address": str(x.address), "priority": x.priority, "weight": x.weight}
                          for x in m.rlocs],
                "action": m.action, "xtr": f"{r.xtr[0]}:{r.xtr[1]}",
                "xtr_id": r.xtr_id.hex() if r.xtr_id is not None else None,
                "last_registered": _iso(r.registered_at), "expires_in": max(0.0, round(r.expires - now, 1)),
                "ttl": m.ttl, "reply_ttl": r.reply_ttl, "proxy_reply": r.proxy_reply,
                "hidden_by": owner if owner is not None and owner != m.source else None}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

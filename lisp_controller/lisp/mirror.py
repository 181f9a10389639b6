"""The control listener thread's own copy of what the Map-Resolver reads
(docs/control-plane.rst, "The listener thread").

The common Map-Requests are answered on a native thread, while the hub
changes the map-cache and the registrations. Nothing is shared that either
side writes: the thread answers from a ``MapResolver`` of its own, over a
map-cache, prefix order and Map-Server registrations of its own, and only
the thread reads or writes those (a single writer, no locks). The hub
tells it of every change as it makes it: the copy watches the controller's
map-cache (``MapCache.watch``: every mapping put, replaced or removed, in
the order committed) and the Map-Server's registrations (``registered``),
each as one entry on a thread-safe queue. The thread applies the queue
(``catch_up``) after it has read a batch of datagrams and before it answers
any of them.

How stale an answer may be: it reflects every change the hub made before
the thread read the datagram, so every change committed before the
datagram arrived; a change the hub makes while the thread answers a batch
reaches the next batch. This is what the hub's own answers gave: the hub
never answered a datagram in the middle of a commit that does not yield.
The sites are the configuration's, fixed for the life of the process (a
new site needs a restart), so the copy takes them once.

Mappings, registrations and sites are immutable values: the copy holds the
same objects as the hub, so it costs the map-cache's dictionaries and the
prefix order a second time, not the mappings.
"""
from __future__ import annotations

from typing import Callable

from eventlet import patcher

from lisp_controller.lisp.common_request import recognise
from lisp_controller.lisp.config import LispSettings
from lisp_controller.lisp.mapserver import Key, MapResolver, MapServer, Registration, Send, Source
from lisp_controller.lisp.negative import PrefixOrder
from lisp_controller.model import MapCache

_queue = patcher.original("queue")   # a native queue: the thread takes from it without the hub
UNTRACK_AFTER = 1000                 # changes applied before the copy's containers are hidden again


class ResolverMirror:
    """A ``MapResolver`` over a copy of the controller's map-cache and
    registrations, fed by the hub and read by the listener thread only.

    Made on the hub from ``cache`` and ``server`` as they are, after which
    the hub's changes reach it through ``changes``; ``answer`` is what the
    listener thread calls for each Map-Request (``ControlListener.on``'s
    ``alone``)."""

    def __init__(self, cache: MapCache, server: MapServer, settings: LispSettings, family: int,
                 count: Callable[..., None] = lambda name, **labels: None):
        self.changes = _queue.SimpleQueue()   # (key, mapping) put/replaced, (key, None) removed, or a registration
        self.count = count                    # the thread's own counts (api/metrics.py, ThreadCounts.inc)
        self.cache = MapCache()
        self.order = PrefixOrder()
        self.cache.watch(self.order)
        self.server = MapServer(server.sites.values(), server.clock)
        self.server.registrations = dict(server.registrations)
        self.resolver = MapResolver(self.cache, self.order, self.server, settings, family)
        self._since_untrack = 0
        cache.watch(self)   # adds every mapping held now, on the hub, before anything can change
        self.catch_up()

    # -- the hub's side: MapCache.watch's protocol and the registrations ---------
    def add(self, key: tuple, mapping) -> None:
        self.changes.put((key, mapping))

    def replace(self, key: tuple, mapping) -> None:
        self.changes.put((key, mapping))

    def discard(self, key: tuple) -> None:
        self.changes.put((key, None))

    def registered(self, key: Key, registration: Registration | None) -> None:
        """The Map-Server's registration of ``key`` now (None: gone)."""
        self.changes.put((_REGISTRATION, key, registration))

    # -- the thread's side ---------------------------------------------------------
    def catch_up(self) -> int:
        """Apply every change the hub queued; how many there were."""
        applied = 0
        get, cache, registrations = self.changes.get_nowait, self.cache, self.server.registrations
        while True:
            try:
                change = get()
            except _queue.Empty:
                break
            applied += 1
            if change[0] is _REGISTRATION:
                _, key, registration = change
                if registration is None:
                    registrations.pop(key, None)
                else:
                    registrations[key] = registration
                continue
            key, mapping = change
            if mapping is None:
                cache.remove(key[0], None, key)
            else:
                cache.add(mapping, key)
        self._since_untrack += applied
        if self._since_untrack >= UNTRACK_AFTER:   # as the state does after a commit (model/untracked.py)
            self._since_untrack = 0
            cache.untrack()
        return applied

    def answer(self, data: bytes, source: Source) -> list[Send] | None:
        """The answer to a Map-Request of the common shape that needs
        nothing but the copy (a Map-Reply or a negative one), or None: the
        hub decodes and answers it (another shape, or a request to forward
        to a site's ETR). Raises ``Refused`` as the hub's resolver would."""
        query = recognise(data)
        if query is None:
            return None
        resolution = self.resolver.resolve(query)
        if resolution.outcome == "forwarded":
            return None
        self.count("lisp_map_requests_total", outcome=resolution.outcome)
        return resolution.sends


_REGISTRATION = object()   # marks a registration change on the queue


"""This controller's etcd lease, kept alive from a native thread.

Everything of a controller that must vanish when it dies hangs on one
lease: its key among the instances alive, the owner keys of the bridges it
masters (store/membership.py) and its ``applied/`` key (store/etcd.py).
The lease lives ``lease_ttl`` seconds (2 by default) after its last
renewal. The controller's work runs on one eventlet hub, which a big step
can hold for seconds (taking another controller's bulk of 100,000
mappings); a keepalive sent from the hub would wait for it, the lease
would end mid-bulk, and the controller would lose its bridges for nothing.

So the keepalives come from a native thread that never waits for the
hub: the interpreter hands it the GIL every few milliseconds whatever the
hub does. eventlet's monkey patching still reaches it: the sockets it
opens are green sockets, but a green socket waits on the hub of the
thread that uses it, and eventlet makes each native thread its own hub, so
its requests never wait for the main one (docs/etcd.rst, "One lease per
instance", says how that was checked). It shares no lock or event with
the hub's green threads (a green lock taken on another thread's hub
would never be woken): the hub side only reads plain attributes (`id`,
`valid_until`, `lost`), which the thread sets whole, and the thread's
own stop event is a native one.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable

from eventlet import patcher

from lisp_controller.config import EtcdSettings
from lisp_controller.store.etcdclient import Cluster, Failure

LOG = logging.getLogger("lisp_controller")
_threading = patcher.original("threading")  # native, even once monkey-patched
_time = patcher.original("time")


class Lease:
    """One etcd lease of `ttl` seconds. `grant` (and `revoke`) are called
    by its owner, on the owner's thread; the keepalives run on a native
    thread of the lease's own with its own connections, each request
    giving up well within the lease (a frozen member must not hold the
    renewal past it)."""

    def __init__(self, settings: EtcdSettings, ttl: int, password: str | None = None, name: str = "lease"):
        self.ttl = ttl
        self.name = name
        self._settings = dataclasses.replace(settings, timeout=min(settings.timeout, max(0.2, ttl / 3)))
        self._password = password or settings.password
        self._owner = Cluster(self._settings, self._password)  # the owner's thread's connections
        self.id = 0  # the live lease, 0 when there is none
        self.granted = ttl  # the TTL etcd gave
        self.valid_until = 0.0  # monotonic time the lease surely lives until
        self.lost: str | None = "not granted yet"  # why there is no lease now
        # The keepalives' latencies, for the owner to hand to the metrics
        # (`drain`): the metrics' locks are the hub's, never taken here.
        self._timings: collections.deque[tuple[str, float]] = collections.deque(maxlen=1000)
        self._stop = _threading.Event()
        self._thread: _threading.Thread | None = None

    # -- the owner's side --------------------------------------------------------------------
    def observe_requests(self, observe: Callable[[str, float], None]) -> None:
        """Have `observe(request path, seconds)` called for the owner's
        requests as they are answered, and for the keepalives on `drain`."""
        self._owner.observe = observe

    def drain(self) -> None:
        """Hand the keepalives' latencies to `observe` (the owner's thread)."""
        observe = self._owner.observe
        while self._timings:
            path, seconds = self._timings.popleft()
            if observe is not None:
                observe(path, seconds)

    def grant(self) -> int:
        """A new lease, kept alive from now on; raises Failure. Any lease
        held before is forgotten (it runs out by itself)."""
        self._owner.authenticate()
        sent = _time.monotonic()
        answer = self._owner.call("lease/grant", {"TTL": self.ttl, "ID": 0}, idempotent=True)
        lease, self.granted = int(answer["ID"]), int(answer.get("TTL", self.ttl))
        self.valid_until, self.lost, self.id = sent + self.granted, None, lease
        if self._thread is None:
            self._thread = _threading.Thread(target=self._keep, name=f"{self.name}-keepalive", daemon=True)
            self._thread.start()
        return lease

    def revoke(self) -> None:
        """End the lease now: every key on it goes at once."""
        lease, self.id, self.lost = self.id, 0, "revoked"
        if lease:
            self._owner.call("lease/revoke", {"ID": lease}, idempotent=True)

    def problem(self) -> str | None:
        """Why the lease may not be trusted now, or None."""
        if self.id == 0:
            return f"no etcd lease ({self.lost})"
        left = self.valid_until - _time.monotonic()
        if left <= 0:
            return f"the etcd lease may have run out ({-left:.1f} s since it surely lived)"
        return None

    def close(self) -> None:
        """Stop the keepalives (the lease is not revoked: see `revoke`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._owner.close()

    # -- the native thread ------------------------------------------------------------------------
    def _keep(self) -> None:
        """Renew the live lease every quarter of its TTL; when etcd says it
        ended, or no renewal was answered before it surely ended, it is
        lost (`id` 0) and its owner grants another."""
        client = Cluster(self._settings, self._password)
        client.observe = lambda path, seconds: self._timings.append((path, seconds))
        try:
            while not self._stop.wait(max(0.1, self.ttl / 4)):
                lease = self.id
                if lease == 0:
                    continue
                sent = _time.monotonic()
                try:
                    if client.user and client.session.headers.get("Authorization") is None:
                        client.authenticate()
                    answer = client.call("lease/keepalive", {"ID": lease}, idempotent=True)
                    ttl = int(answer.get("result", {}).get("TTL", 0))
                except Failure as e:
                    if _time.monotonic() >= self.valid_until and self.id == lease:
                        self._lose(lease, f"no keepalive answered within the lease's {self.granted} s: {e}")
                    continue
                if ttl <= 0:
                    self._lose(lease, f"etcd says lease {lease:x} ran out")
                elif self.id == lease:
                    self.valid_until = sent + ttl
        except Exception:  # noqa: BLE001 - a thread that dies silently would end the lease unnoticed
            LOG.exception("%s: keepalive thread failed; the lease ends", self.name)
            self.lost, self.id = "its keepalive thread failed", 0
        finally:
            client.close()

    def _lose(self, lease: int, why: str) -> None:
        if self.id == lease:
            self.lost, self.id = why, 0
            LOG.error("%s: etcd lease %x lost: %s", self.name, lease, why)

"""What every controller's bridges hold: the ``applied/`` keys on etcd.

A write through one controller answers once every live controller's
bridges hold it (docs/etcd.rst, "Writes confirmed everywhere"). Each
controller keeps ``P applied/<instance>`` saying ``{"seq": N}``, the
changes its bridges confirmed, on its instance's one lease, so a
controller that dies or loses etcd drops out of every writer's wait when
the lease ends; the keys that exist are the controllers alive. The writer
follows every such key (read them all, then watch them) and waits on them.

This board is the etcd store's (store/etcd.py), which runs its two loops
on native threads beside its own watch of the head.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

from lisp_controller.config import EtcdSettings
from lisp_controller.store.etcdclient import CUT, Cluster, Failure, b64, range_end, unb64
from lisp_controller.store.lease import Lease

LOG = logging.getLogger(__name__)

# Seconds the applied/ key of a store without a shared lease (a store used
# on its own, as the tests and bench/etcd.py do) outlives it; a controller
# shares its instance's lease instead (store/lease.py).
PEER_TTL = 10
PEER_RENEW = 1.0  # seconds between looks at the lease (a new one after a loss: the key is put again)


class AppliedBoard:
    """This controller's ``applied/`` key, and every other controller's."""

    def __init__(self, cluster: Cluster, prefix: str, settings: EtcdSettings, password: str | None,
                 instance: str, name: str, closed: threading.Event):
        self._cluster, self._settings, self._password = cluster, settings, password
        self._prefix = f"{prefix}applied/"
        self.instance, self._name, self._closed = instance, name, closed
        self._applied: int | None = None
        self._wake = threading.Event()
        self._peers: dict[str, int] = {}
        self._changed = threading.Condition()
        self._stream = None
        self._shared: Lease | None = None  # the instance's lease, once shared
        self._lease: Lease | None = None  # the lease the key is on

    def share_lease(self, lease: Lease, instance: str) -> None:
        """Put ``applied/<instance>`` on `lease`, the instance's own (which
        its owner grants and renews), instead of a lease of the board's:
        one lease per instance. Before the loops start."""
        self._shared, self.instance = lease, instance

    def applied(self, seq: int) -> None:
        """This controller's bridges hold every change up to `seq`."""
        if self._applied is None or seq > self._applied:
            self._applied = seq
            self._wake.set()

    def publish_loop(self) -> None:
        """Keep ``applied/<instance>`` saying the newest `applied`, on the
        instance's lease (or one of the board's own, granted here). A new
        lease after a loss: the key is put again on it."""
        key = f"{self._prefix}{self.instance}"
        own = self._shared is None
        lease = self._lease = self._shared or Lease(self._settings, PEER_TTL, self._password,
                                                    name=f"store {self._name}")
        if own:
            lease.observe_requests(self._cluster.observe)
        published, delay, complained = None, 0.1, False
        while not self._closed.is_set():
            try:
                if own:
                    lease.drain()
                    if lease.id == 0:
                        lease.grant()
                target, lease_id = self._applied, lease.id
                if target is not None and lease_id and (lease_id, target) != published:
                    self._cluster.call("kv/put", {"key": b64(key), "value": b64(json.dumps({"seq": target})),
                                                  "lease": lease_id}, idempotent=True)
                    published = (lease_id, target)
                delay, complained = 0.1, False
            except (Failure, KeyError, ValueError) as e:
                if not self._closed.is_set() and not complained:
                    LOG.warning("store %s: cannot say which changes this controller applied (%s); "
                                "trying again", self._name, e)
                    complained = True
                self._closed.wait(delay)
                delay = min(2 * delay, 1.0)
                continue
            self._wake.wait(PEER_RENEW)
            self._wake.clear()

    def follow_loop(self) -> None:
        """Follow every ``applied/`` key: read them all, then watch them."""
        prefix = self._prefix
        delay = 0.1
        while not self._closed.is_set():
            try:
                answer = self._cluster.call("kv/range", {"key": b64(prefix), "range_end": b64(range_end(prefix))},
                                            idempotent=True)
                peers = {unb64(kv["key"]).decode()[len(prefix):]: _applied_seq(kv)
                         for kv in answer.get("kvs") or ()}
                with self._changed:
                    self._peers = peers
                    self._changed.notify_all()
                start = int(answer["header"]["revision"]) + 1
                for event in self._cluster.watch(prefix, start, self._on_stream, prefix=True):
                    instance = unb64(event["kv"]["key"]).decode()[len(prefix):]
                    with self._changed:
                        if event.get("type") == "DELETE":
                            self._peers.pop(instance, None)
                        else:
                            self._peers[instance] = _applied_seq(event["kv"])
                        self._changed.notify_all()
                    delay = 0.1
            except CUT as e:
                if not self._closed.is_set():
                    LOG.debug("store %s: watch of the controllers interrupted (%s)", self._name, e)
            except Exception:
                if not self._closed.is_set():
                    LOG.exception("store %s: watch of the controllers failed", self._name)
            finally:
                self._stream = None
            if self._closed.wait(delay):
                return
            delay = min(2 * delay, 2.0)

    def _on_stream(self, resp, url: str) -> None:
        self._stream = resp

    def cut_stream(self) -> None:
        """Cut the watch's stream (`follow_loop` starts it again, elsewhere)."""
        cut(self._stream)

    def peers(self) -> dict[str, int]:
        """Every controller alive (this one too, once it said so), and the
        change its bridges hold."""
        with self._changed:
            return dict(self._peers)

    def wait_applied(self, seq: int, timeout: float) -> list[dict]:
        """Wait until every other live controller holds change `seq`, or
        `timeout`; say for each whether it confirmed, timed out or went."""
        deadline = time.monotonic() + timeout
        with self._changed:
            others = sorted(p for p in self._peers if p != self.instance)
            while True:
                behind = [p for p in others if self._peers.get(p, seq) < seq]
                remaining = deadline - time.monotonic()
                if not behind or remaining <= 0:
                    break
                self._changed.wait(remaining)
            peers = dict(self._peers)
        return [{"instance": p, "applied": peers.get(p),
                 "status": "gone" if p not in peers else "confirmed" if peers[p] >= seq else "timeout"}
                for p in others]

    def close(self) -> None:
        """Wake the publisher and cut the watch, so both loops see `closed`
        (which the caller set) at once."""
        self._wake.set()
        self.cut_stream()

    def revoke_own_lease(self) -> None:
        """After the loops ended: the board's own lease goes (an instance's
        shared lease is its owner's to end)."""
        own = self._lease if self._lease is not self._shared else None
        if own is not None:
            with contextlib.suppress(Failure):
                own.revoke()
            own.close()


def cut(resp) -> None:
    """Shut a watch's HTTP stream under its reader."""
    if resp is None:
        return
    with contextlib.suppress(Exception):
        resp.raw._connection.sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        resp.close()


def _applied_seq(kv: dict) -> int:
    """The change number an ``applied/`` key says."""
    return int(json.loads(unb64(kv.get("value", "")))["seq"])

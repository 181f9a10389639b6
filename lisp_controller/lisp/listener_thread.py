"""The control listener's socket read on a native OS thread
(docs/control-plane.rst, "The listener thread").

The hub runs everything else of the controller: OpenFlow sessions, the REST
API, timers, commits. A Map-Request that waits for the hub waits behind
whatever it does (docs/performance.rst, "Map-Server"), so the UDP socket is
read by a thread of its own, which answers the common Map-Requests itself
from its copy of the map-cache (lisp/mirror.py) and hands the rest to the
hub:

* the thread blocks in the kernel (the original ``select``, not eventlet's:
  the process is monkey-patched), reads what is queued (``MAX_BATCH`` at
  most), lets ``before_batch`` catch its copy up with the hub's changes,
  rate-limits every datagram as the hub did (the limiters are the thread's
  alone now), answers those a handler's ``alone`` can answer, and sends the
  answers together;
* everything else goes to the hub on a native queue, with a byte on a
  socket pair that the hub's greenthread waits on, once per batch that
  handed anything: Map-Registers and requests the thread cannot answer
  (they are decoded and handled there, ``ControlListener.answer_handed``),
  every refusal's count and log line, a handler's bug with its traceback.
  The hub never blocks the thread: the queue is unbounded up to
  ``MAX_HANDED`` items, beyond which the thread drops datagrams (counted,
  reason ``hub-busy``) as the kernel would drop them from a full buffer;
* what the thread counts per datagram (datagrams, answers by outcome,
  latencies) it keeps in ``ThreadCounts``, added to the metrics when
  scraped.

While the thread runs Python it holds the interpreter lock, and the hub
waits for it; it holds it for one batch at a time and gives it up in every
system call. ``stop`` (or the hub's greenthread ending) stops the thread
and closes the socket.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Callable

from eventlet import hubs, patcher

from lisp_controller.api.metrics import ThreadCounts
from lisp_controller.lisp.listener import MAX_BATCH, MAX_DATAGRAM, YIELD_EVERY, ControlListener, Send, Source

_threading = patcher.original("threading")
_queue = patcher.original("queue")
_select = patcher.original("select")
_socket = patcher.original("socket")

LOG = logging.getLogger("lisp_controller.lisp")
MAX_HANDED = 8192        # items waiting for the hub before the thread drops datagrams
SEND_WAIT = 1.0          # seconds the thread waits for room in a full send buffer
STOP_WAIT = 5.0          # seconds ``stop`` waits for the thread


class ListenerThread:
    """Serves ``listener``'s socket on a native thread (the module's doc);
    ``serve`` is the hub's side, to run in a greenthread."""

    def __init__(self, listener: ControlListener, before_batch: Callable[[], object] = lambda: None):
        self.listener, self.before_batch = listener, before_batch
        self.counts = ThreadCounts()
        getattr(listener.metrics, "follow", lambda counts: None)(self.counts)
        self.handed = _queue.SimpleQueue()
        self._wake_hub, self._woken = _socket.socketpair()
        for end in (self._wake_hub, self._woken):
            end.setblocking(False)
        self._stop_read, self._stop_write = os.pipe()
        self.thread: _threading.Thread | None = None
        self._stopped = False
        self._handed_count = 0   # items handed so far: a batch that handed any wakes the hub

    # -- the hub's side ------------------------------------------------------------
    def start(self) -> None:
        """Open the socket if need be and start the thread."""
        sock = self.listener.sock or self.listener.bind()
        self._os_socket = getattr(sock, "fd", sock)   # eventlet's green socket keeps the OS one as fd
        self._os_socket.setblocking(False)
        self.thread = _threading.Thread(target=self._run, name="lisp-control-listener", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        """Start the thread, then do on the hub what it hands over, until
        killed; the thread stops with it."""
        if self.thread is None:
            self.start()
        try:
            while True:
                hubs.trampoline(self._woken.fileno(), read=True)
                try:
                    self._woken.recv(4096)
                except BlockingIOError:
                    pass
                self.run_handed()
        finally:
            self.stop()

    def run_handed(self) -> int:
        """Do what the thread handed over so far; how many items there were."""
        done = 0
        while True:
            try:
                function, args = self.handed.get_nowait()
            except _queue.Empty:
                return done
            try:
                function(*args)
            except Exception:
                LOG.exception("LISP control: handling what the listener thread handed over failed")
            done += 1
            if done % YIELD_EVERY == 0:
                time.sleep(0)   # the hub's sleep: let others run

    def stop(self) -> None:
        """Stop the thread, wait for it, close the socket. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        os.write(self._stop_write, b"x")
        if self.thread is not None:
            self.thread.join(STOP_WAIT)
        if self.listener.sock is not None:
            self.listener.sock.close()
            self.listener.sock = None
        for end in (self._wake_hub, self._woken):
            end.close()
        os.close(self._stop_read)
        os.close(self._stop_write)

    def _answer_handed(self, data: bytes, source: Source, arrived: float) -> None:
        sock = self.listener.sock
        if sock is None:
            return
        for payload, target in self.listener.answer_handed(data, source, arrived):
            self.listener._send(sock, getattr(sock, "fd", sock), payload, target)

    # -- the thread's side ----------------------------------------------------------
    def _run(self) -> None:
        sock, stop = self._os_socket, self._stop_read
        while True:
            try:
                ready, _, _ = _select.select([sock, stop], [], [])
            except (OSError, ValueError):   # closed under us: stopping
                return
            if stop in ready:
                return
            try:
                self._batch(sock)
            except Exception:   # never the thread: say so on the hub, go on with the next batch
                self._hand(LOG.error, ("LISP control: the listener thread's batch failed:\n%s",
                                       traceback.format_exc().rstrip()))
                self._wake()

    def _batch(self, sock) -> None:
        batch: list[tuple[bytes, tuple]] = []
        handed_before = self._handed_count
        try:
            while len(batch) < MAX_BATCH:
                batch.append(sock.recvfrom(MAX_DATAGRAM))
        except BlockingIOError:
            pass
        except OSError as e:   # e.g. ICMP port unreachable reported on the socket
            self.counts.inc("lisp_control_dropped_total", reason="socket-error")
            self._hand(LOG.debug, ("LISP control socket: %s", e))
        if batch:
            self._answer(sock, batch)
        if self._handed_count != handed_before:
            self._wake()

    def _answer(self, sock, batch: list[tuple[bytes, tuple]]) -> None:
        arrived, now = time.perf_counter(), self.listener.clock()
        counts = self.counts
        counts.inc("lisp_control_datagrams_total", len(batch))
        self.before_batch()   # the copy catches up with what the hub changed before these arrived
        handle, report = self.listener._handle, self._report
        sends: list[Send] = []
        timed: list[str] = []
        for data, peer in batch:
            source = (peer[0], peer[1])
            answer, latency = handle(data, source, now, report, alone=True)
            if answer is None:
                self._report(self._answer_handed, data, source, arrived)
                continue
            sends += answer
            if latency is not None:
                timed.append(latency)
        for payload, target in sends:
            self._send(sock, payload, target)
        if timed:
            seconds = time.perf_counter() - arrived
            for name in set(timed):
                counts.observe(name, seconds, timed.count(name))

    def _send(self, sock, payload: bytes, target: Source) -> None:
        try:
            try:
                sock.sendto(payload, target)
            except BlockingIOError:   # the send buffer is full: wait for room, in the kernel
                _, writable, _ = _select.select([], [sock], [], SEND_WAIT)
                if not writable:
                    raise
                sock.sendto(payload, target)
        except OSError as e:
            self.counts.inc("lisp_control_dropped_total", reason="send-failed")
            self._hand(self._send_failed, (target, str(e)))

    def _send_failed(self, target: Source, error: str) -> None:
        if self.listener.should_log(target[0], "send-failed"):
            LOG.warning("LISP control: cannot send to %s:%d: %s", target[0], target[1], error)

    def _report(self, function: Callable[..., None], *args) -> None:
        """``ControlListener._handle``'s report on the thread: to the hub,
        unless ``MAX_HANDED`` items wait for it already (then dropped and
        counted: a hub that far behind must not make the queue grow)."""
        if self.handed.qsize() >= MAX_HANDED:
            self.counts.inc("lisp_control_dropped_total", reason="hub-busy")
            return
        self._hand(function, args)

    def _hand(self, function: Callable[..., None], args: tuple) -> None:
        self.handed.put((function, args))
        self._handed_count += 1

    def _wake(self) -> None:
        try:
            self._wake_hub.send(b"x")
        except BlockingIOError:   # the pair's buffer is full of wake-ups: the hub is awake already
            pass
        except OSError:           # closed: stopping
            pass

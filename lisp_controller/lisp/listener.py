"""The LISP control listener: one UDP socket (port 4342 of a configured
address), datagrams decoded with the codec and dispatched by message type to
handlers registered with ``on`` (docs/control-plane.rst).

It faces the network, so every datagram is suspect: each source address has
a token bucket per message type (checked before decoding, so a flood costs a
dictionary lookup per datagram), every decode error and every exception of a
handler is caught and counted for that one datagram, and what is logged about
a source is logged once per reason per minute. Nothing about a refusal is
sent back.

Handlers return the datagrams to send; they never block. ``serve`` reads
the socket on the hub and yields to it every few datagrams so a flood
cannot starve OpenFlow or the API; the controller instead reads it on a
native thread (lisp/listener_thread.py), which answers what a handler's
``alone`` can and hands the rest to the same code here, on the hub.
"""
from __future__ import annotations

import logging
import socket
import time
import traceback
from typing import Callable, Iterable

from lisp_controller.lisp.addresses import LispDecodeError
from lisp_controller.lisp.mapserver import Refused, Send, Source
from lisp_controller.lisp.messages import (EncapsulatedControlMessage, MapNotify, MapNotifyAck, MapRegister,
                                          MapReply, MapRequest, decode)

LOG = logging.getLogger("lisp_controller.lisp")
MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 4 * 1024 * 1024   # room for a burst while a big commit runs
YIELD_EVERY = 32                   # datagrams handled between yields to the hub
MAX_BATCH = 32                     # datagrams read from the socket before any is answered
LOG_INTERVAL = 60.0                # seconds between two log lines for one (source, reason)
_TYPES = {cls.TYPE: cls for cls in (MapRequest, MapReply, MapRegister, MapNotify, MapNotifyAck,
                                    EncapsulatedControlMessage)}

Handler = Callable[[object, bytes, Source], Iterable[Send]]
RefusedCallback = Callable[[str, Source], None]
# What the listener thread answers alone (lisp/listener_thread.py): the
# datagrams to send, or None for the hub to answer; raises Refused.
Alone = Callable[[bytes, Source], "list[Send] | None"]
Report = Callable[..., None]   # report(function, *args): call it now (hub) or hand it to the hub (thread)


def _now(function: Callable[..., None], *args) -> None:
    function(*args)


class NoMetrics:
    """What the listener counts with when nobody reads the counts."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float, count: int = 1) -> None:
        pass

    def follow(self, counts: object) -> None:
        pass


def decode_refusal(error: LispDecodeError) -> str:
    """The refusal reason of a datagram the codec could not decode:
    truncated (a length or count beyond its end), bad-lcaf, or malformed."""
    text = str(error)
    if text.startswith("truncated") or "cannot fit" in text:
        return "truncated"
    if "LCAF" in text:
        return "bad-lcaf"
    return "malformed"


class RateLimiter:
    """A token bucket per source address: ``rate`` per second, bursts of up
    to one second's worth. At most ``max_sources`` are tracked; when that is
    reached, buckets that are full again (idle sources) are forgotten (at
    most once a second: the sweep costs a pass over all of them), and until
    then new sources share one bucket. So spoofed sources can neither grow
    memory without bound nor make every datagram pay for a sweep."""

    def __init__(self, rate: float, max_sources: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_sources, self.clock = rate, max(rate, 1.0), max_sources, clock
        self._buckets: dict[str, list[float]] = {}   # source -> [tokens, last refill]
        self._swept = float("-inf")

    def allow(self, source: str, now: float | None = None) -> bool:
        """Whether ``source`` may send one more now (``now``: the clock,
        when the caller read it already)."""
        if now is None:
            now = self.clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                if now - self._swept >= 1.0:
                    self._swept = now
                    self._prune(now)
                if len(self._buckets) >= self.max_sources:
                    source = "*"
                    bucket = self._buckets.get(source)
            if bucket is None:
                bucket = self._buckets[source] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        full = [s for s, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for s in full:
            del self._buckets[s]


class LogLimiter:
    """Whether to log (source, reason) now: once per ``interval`` seconds,
    for a bounded number of pairs."""

    def __init__(self, interval: float = LOG_INTERVAL, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.interval, self.max_entries, self.clock = interval, max_entries, clock
        self._last: dict[tuple[str, str], float] = {}
        self._swept = float("-inf")

    def __call__(self, source: str, reason: str) -> bool:
        now = self.clock()
        key = (source, reason)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if last is None and len(self._last) >= self.max_entries:
            if now - self._swept >= 1.0:   # a sweep at most once a second, as RateLimiter
                self._swept = now
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_entries:
                return False
        self._last[key] = now
        return True


def _name(data: bytes) -> str:
    """The message type of a datagram, for log lines."""
    kind = data[0] >> 4
    return _TYPES[kind].__name__ if kind in _TYPES else str(kind)


class ControlListener:
    """Receives LISP control datagrams and dispatches them by type.

    ``on(MapRegister, handler, refused=..., rate=..., latency=...)``:
    datagrams of that type are rate-limited per source, decoded and given to
    ``handler(message, raw, source)``, which returns the datagrams to send
    (or raises ``Refused``). ``decoder`` (the codec's ``decode`` unless
    given, as ``common_request.decode_request`` for Map-Requests) makes the
    message or raises ``LispDecodeError``. ``refused(reason, source)``
    hears of each datagram of that type refused before or by the handler;
    the time from receipt to the answer being ready goes to the histogram
    ``latency``. Types without a handler are dropped undecoded and
    counted. ``alone(raw, source)`` answers datagrams of that type on the
    listener thread, when one serves (lisp/listener_thread.py): the
    datagrams to send, or None to hand the datagram to ``handler`` on the
    hub."""

    def __init__(self, address: str, port: int, metrics=None, max_sources: int = 65536,
                 clock: Callable[[], float] = time.monotonic):
        self.address, self.port = address, port
        self.metrics = metrics or NoMetrics()
        self.max_sources, self.clock = max_sources, clock
        self.should_log = LogLimiter(clock=clock)
        self._handlers: dict[int, tuple] = {}
        self.sock: socket.socket | None = None

    def on(self, message_class: type, handler: Handler, refused: RefusedCallback = lambda r, s: None,
           rate: float | None = None, latency: str | None = None,
           decoder: Callable[[bytes], object] = decode, alone: Alone | None = None) -> None:
        limiter = RateLimiter(rate, self.max_sources, self.clock) if rate is not None else None
        self._handlers[message_class.TYPE] = (handler, refused, limiter, latency, decoder, alone)

    def count(self, name: str, **labels: str) -> None:
        self.metrics.inc(name, **labels)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def bind(self) -> socket.socket:
        """Open the socket (raises OSError naming nothing; the caller says where)."""
        sock = socket.socket(socket.AF_INET6 if self.family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((self.address, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def serve(self) -> None:
        """Receive and answer forever (run in its own greenthread).

        Datagrams are read and answers sent on the OS socket itself, which
        eventlet's green socket keeps non-blocking as ``fd``: its wrapper
        adds a layer of Python per call (docs/performance.rst). Whatever is
        queued is read as one batch (up to ``MAX_BATCH``), answered, and the
        answers sent together: a client waiting for them is woken once per
        batch rather than once per answer, and the batch shares one reading
        of the clocks and one count. Only when nothing is queued does the
        greenthread wait, in the green socket's ``recvfrom``; a send that
        would block waits in its ``sendto`` the same way. Unpatched (no
        ``fd``), the socket is used as it is."""
        sock = self.sock or self.bind()
        direct = getattr(sock, "fd", sock)
        since_yield = 0
        while True:
            batch = self._receive(sock, direct)
            if not batch:
                continue
            arrived, now = time.perf_counter(), self.clock()
            self.metrics.inc("lisp_control_datagrams_total", len(batch))
            sends: list[Send] = []
            timed: list[str] = []   # the latency histogram of each datagram answered
            for data, peer in batch:
                answer, latency = self._handle(data, (peer[0], peer[1]), now)
                sends += answer
                if latency is not None:
                    timed.append(latency)
            for payload, target in sends:
                self._send(sock, direct, payload, target)
            if timed:   # from the batch's arrival to its answers sent
                self._observe(timed, time.perf_counter() - arrived)
            since_yield += len(batch)
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                time.sleep(0)   # the hub's sleep once monkey-patched: let others run

    def _receive(self, sock, direct) -> list[tuple[bytes, tuple]]:
        """What is queued on the socket (at most MAX_BATCH datagrams); if
        nothing is, the next datagram, waited for on the hub."""
        batch: list[tuple[bytes, tuple]] = []
        try:
            if direct is sock:   # unpatched: a blocking socket, read one at a time
                batch.append(sock.recvfrom(MAX_DATAGRAM))
            while len(batch) < MAX_BATCH and direct is not sock:
                try:
                    batch.append(direct.recvfrom(MAX_DATAGRAM))
                except BlockingIOError:   # none queued
                    if batch:
                        break
                    batch.append(sock.recvfrom(MAX_DATAGRAM))   # wait for the next one on the hub
        except OSError as e:   # e.g. ICMP port unreachable reported on the socket
            self.count("lisp_control_dropped_total", reason="socket-error")
            LOG.debug("LISP control socket: %s", e)
        return batch

    def _send(self, sock, direct, payload: bytes, target: Source) -> None:
        try:
            try:
                direct.sendto(payload, target)
            except BlockingIOError:   # the send buffer is full: wait for room on the hub
                sock.sendto(payload, target)
        except OSError as e:
            self.count("lisp_control_dropped_total", reason="send-failed")
            if self.should_log(target[0], "send-failed"):
                LOG.warning("LISP control: cannot send to %s:%d: %s", target[0], target[1], e)

    def _observe(self, histograms: list[str], seconds: float) -> None:
        """One latency for every datagram of a batch, by histogram."""
        for name in set(histograms):
            self.metrics.observe(name, seconds, histograms.count(name))

    def handle(self, data: bytes, source: Source) -> list[Send]:
        """One datagram in, the datagrams to send out; never raises. Its
        latency (to the answer being ready) goes to its histogram."""
        self.metrics.inc("lisp_control_datagrams_total")
        started = time.perf_counter()
        sends, latency = self._handle(data, source, self.clock())
        if latency is not None:
            self.metrics.observe(latency, time.perf_counter() - started)
        return sends

    def _handle(self, data: bytes, source: Source, now: float, report: Report = _now,
                alone: bool = False) -> tuple[list[Send] | None, str | None]:
        """The datagrams to send for one datagram, and the latency histogram
        to record it in (None if it was refused or has none); never raises.
        ``now`` is the rate limits' clock when it was read. On the listener
        thread (``alone``) only the type's ``alone`` answers, None (for the
        datagrams) means the hub's handler must, and what is counted or
        logged about a refusal goes through ``report`` to the hub."""
        entry = self._handlers.get(data[0] >> 4) if data else None
        if entry is None:
            kind = data[0] >> 4 if data else None
            reason = "empty" if kind is None else "unhandled-type"
            report(self._drop, reason, source, f"message type {kind} has no handler here")
            return [], None
        handler, refused, limiter, latency, decoder, answer_alone = entry
        if limiter is not None and not limiter.allow(source[0], now):
            report(self._refuse, refused, source, "rate-limited",
                   f"{_name(data)} refused: rate-limited: more than {limiter.rate:g} {_name(data)} per second")
            return [], None
        if not alone:
            return self._answer(entry, data, source)
        if answer_alone is None:
            return None, latency
        try:
            sends = answer_alone(data, source)
            return (None if sends is None else list(sends)), latency
        except Refused as e:
            report(self._refuse, refused, source, e.reason, f"{_name(data)} refused: {e}")
        except Exception:   # a bug must cost one datagram, never the listener
            report(self._fail, source, data, traceback.format_exc())
        return [], None

    def _answer(self, entry: tuple, data: bytes, source: Source) -> tuple[list[Send], str | None]:
        """Decode and answer an admitted datagram on the hub; never raises."""
        handler, refused, _, latency, decoder, _ = entry
        try:
            try:
                message = decoder(data)
            except LispDecodeError as e:
                raise Refused(decode_refusal(e), str(e)) from None
            return list(handler(message, data, source)), latency
        except Refused as e:
            self._refuse(refused, source, e.reason, f"{_name(data)} refused: {e}")
        except Exception:   # a bug must cost one datagram, never the listener
            self._fail(source, data, None)
        return [], None

    def answer_handed(self, data: bytes, source: Source, arrived: float) -> list[Send]:
        """On the hub, a datagram the listener thread admitted but could not
        answer alone: decoded and given to its handler (``arrived``: when
        its batch was read, on ``time.perf_counter``)."""
        sends, latency = self._answer(self._handlers[data[0] >> 4], data, source)
        if latency is not None:
            self.metrics.observe(latency, time.perf_counter() - arrived)
        return sends

    def _drop(self, reason: str, source: Source, text: str) -> None:
        self.count("lisp_control_dropped_total", reason=reason)
        self._log(source, reason, text)

    def _refuse(self, refused: RefusedCallback, source: Source, reason: str, text: str) -> None:
        refused(reason, source)
        self._log(source, reason, text)

    def _fail(self, source: Source, data: bytes, trace: str | None) -> None:
        """A handler's bug (``trace``: its traceback, if it was on the thread)."""
        self.count("lisp_control_dropped_total", reason="handler-error")
        if self.should_log(source[0], "handler-error"):
            if trace is None:
                LOG.exception("LISP control: %s from %s failed", _name(data), source[0])
            else:
                LOG.error("LISP control: %s from %s failed on the listener thread:\n%s", _name(data), source[0],
                          trace.rstrip())

    def _log(self, source: Source, reason: str, text: str) -> None:
        if self.should_log(source[0], reason):
            LOG.warning("LISP control from %s:%d: %s (logged once a minute per source and reason)",
                        source[0], source[1], text)

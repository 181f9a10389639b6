"""The control listener's thread (lisp/listener_thread.py, lisp/mirror.py)
in this process: a real ``MappingSystem`` over a real ``State`` on a
loopback socket, its greenthreads on eventlet's hub, its thread a native
one. The hub is "blocked" by this test's own code running without
yielding: whatever is answered meanwhile was answered by the thread.

The real controller process answers the same way in test_mapserver_e2e.py
and test_control_plane.py."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import SimpleNamespace

import eventlet
import eventlet.event
from eventlet.green import socket as green_socket
import pytest

from lisp_controller.api.metrics import Metrics
from lisp_controller.config import parse_config
from lisp_controller.controller.state import Change, State
from lisp_controller.lisp import (AuthKey, EidRecord, InstanceIdAddress, LocatorRecord, MapNotify, MapRegister,
                                  MapReply, MapRequest, MapRequestRecord, decode, encode, sign, wrap_in_ecm)
from lisp_controller.lisp import service
from lisp_controller.lisp.service import MappingSystem
from lisp_controller.model import Mapping, Rloc, parse_prefix

pytestmark = pytest.mark.unit

IID = 1000
KEY = "thread-site-key"
CONFIG = {
    "lisp": {"listen": "127.0.0.1", "request_rate": 1000},
    "site": [{"name": "A", "keys": [{"key_id": 1, "key": KEY}],
              "prefixes": [{"iid": IID, "eid": "10.1.0.0/16", "accept_more_specifics": True}]}],
    "bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": IID,
                "endpoint": [{"port": "vnet0", "mac": "52:54:00:00:00:01", "eids": ["10.9.0.20"]}]}],
}
ANSWER_WAIT = 5.0   # seconds a client waits at most (a bound on a hang, not a speed)


class GreenEvent:
    """os-ken's eventlet Event (the controller runs os-ken's eventlet hub;
    this process has its native one unless told otherwise)."""

    def __init__(self):
        self._event = eventlet.event.Event()

    def set(self):
        if not self._event.ready():
            self._event.send(True)

    def clear(self):
        if self._event.ready():
            self._event.reset()

    def wait(self, timeout=None):
        self._event.wait()


GREEN_HUB = SimpleNamespace(spawn=eventlet.spawn, sleep=eventlet.sleep, Event=GreenEvent)


class System:
    """A MappingSystem with what it needs of the controller app, its
    greenthreads on eventlet's hub as in the controller."""

    def __init__(self, config: dict = CONFIG):
        self._hub, service.hub = service.hub, GREEN_HUB
        parsed = parse_config(config)
        self.state = State(parsed)
        app = SimpleNamespace(state=self.state, apply_change=lambda change, wait=None: self.state.apply(change))
        app.metrics = self.metrics = Metrics(SimpleNamespace(state=self.state, datapaths=lambda: [],
                                                             mapping_system=None))
        self.ms = MappingSystem(app, parsed.lisp)
        sock = green_socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # as bind() makes it, monkey-patched
        sock.bind(("127.0.0.1", 0))   # any free port
        self.ms.listener.sock = sock
        self.address = sock.getsockname()
        self.greenthreads = self.ms.start()
        eventlet.sleep(0)   # let the greenthreads start

    def close(self) -> None:
        for gt in self.greenthreads:
            gt.kill()
        eventlet.sleep(0)
        service.hub = self._hub

    def scraped(self, name: str, **labels: str) -> float:
        self.metrics._flush()
        return self.metrics._series_of((name, *labels.items()))._value.get()


@pytest.fixture
def system():
    s = System()
    try:
        yield s
    finally:
        s.close()


def request(eid: str, nonce: bytes = b"nonce-01", port: int = 40000) -> bytes:
    address = ipaddress.ip_address(eid)
    itr = ipaddress.ip_address("127.0.0.1")
    message = MapRequest(nonce, (MapRequestRecord(InstanceIdAddress(IID, address), 32),), (itr,))
    return encode(wrap_in_ecm(message, itr, address, port))


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def answered_while_the_hub_is_busy(system: System, sock: socket.socket, payload: bytes) -> bytes | None:
    """Send ``payload`` from a native thread while this code holds the hub
    (it never yields) until the answer comes or ANSWER_WAIT passes: the
    answer, if it came while the hub was held, else None."""
    got: list[bytes] = []

    def send_and_wait():
        sock.settimeout(ANSWER_WAIT)
        sock.sendto(payload, system.address)
        try:
            got.append(sock.recvfrom(65535)[0])
        except OSError:
            pass

    asker = threading.Thread(target=send_and_wait)
    held_until = time.monotonic() + ANSWER_WAIT
    asker.start()
    while not got and time.monotonic() < held_until:   # the hub's only thread is busy here
        sum(range(1000))
    answered = got[0] if got else None
    asker.join()
    return answered


def ask(system: System, eid: str) -> MapReply | None:
    """The reply to a Map-Request for ``eid`` (the reply comes to the
    inner UDP source port), answered while the hub is busy."""
    sock = client()
    try:
        data = answered_while_the_hub_is_busy(system, sock, request(eid, port=sock.getsockname()[1]))
    finally:
        sock.close()
    return decode(data) if data is not None else None


def rlocs_of(reply: MapReply) -> list[str]:
    (record,) = reply.records
    return [str(loc.address) for loc in record.locators]


def test_a_request_is_answered_while_the_hub_is_busy_from_what_the_hub_committed_before(system):
    # (On main the hub's greenthread read the socket: nothing is answered while it is held.)
    reply = ask(system, "10.9.0.20")
    assert reply is not None and rlocs_of(reply) == ["192.0.2.1"]           # our own endpoint
    reply = ask(system, "10.5.0.1")
    assert reply is not None and reply.records[0].locators == ()            # a hole: negative
    eid = parse_prefix("10.5.0.0/24")
    system.state.apply(Change(put=[Mapping(IID, eid, (Rloc(ipaddress.ip_address("192.0.2.77")),), source="api")]))
    assert rlocs_of(ask(system, "10.5.0.1")) == ["192.0.2.77"]              # put
    system.state.apply(Change(put=[Mapping(IID, eid, (Rloc(ipaddress.ip_address("192.0.2.78")),), source="api")]))
    assert rlocs_of(ask(system, "10.5.0.1")) == ["192.0.2.78"]              # replaced
    system.state.apply(Change(delete=[(IID, eid)]))
    assert ask(system, "10.5.0.1").records[0].locators == ()                # removed
    assert system.scraped("lisp_map_requests_total", outcome="negative") == 2
    assert system.scraped("lisp_map_requests_total", outcome="answered") == 3


def register(eid: str, rloc: str, ttl: int = 3) -> bytes:
    net = ipaddress.ip_network(eid)
    record = EidRecord(InstanceIdAddress(IID, net.network_address), net.prefixlen,
                       (LocatorRecord(ipaddress.ip_address(rloc)),), ttl)
    return sign(MapRegister(bytes(range(8)), (record,), want_map_notify=True, proxy_reply=True,
                            use_ttl_for_timeout=True), AuthKey(1, KEY))


def on_the_hub(sock: socket.socket, payload: bytes, target) -> bytes:
    """Send and wait for the answer while letting the hub run."""
    sock.setblocking(False)
    sock.sendto(payload, target)
    deadline = time.monotonic() + ANSWER_WAIT
    while time.monotonic() < deadline:
        try:
            return sock.recvfrom(65535)[0]
        except BlockingIOError:
            eventlet.sleep(0.001)
    raise AssertionError("no answer")


def test_registrations_coming_and_going_reach_the_threads_answers(system):
    sock = client()
    notify = decode(on_the_hub(sock, register("10.1.7.0/24", "192.0.2.7"), system.address))
    assert isinstance(notify, MapNotify)   # Map-Registers are handled on the hub
    eventlet.sleep(0.05)                   # the registration's commit (service.BATCH_DELAY)
    reply = ask(system, "10.1.7.9")
    # The registration's reply TTL (a day: the ETR times out by record TTL), not the mapping's 3 minutes.
    assert rlocs_of(reply) == ["192.0.2.7"] and reply.records[0].ttl == 1440
    on_the_hub(sock, register("10.1.7.0/24", "192.0.2.7", ttl=0), system.address)   # withdrawn
    eventlet.sleep(0.05)
    reply = ask(system, "10.1.7.9")
    assert reply.records[0].locators == () and reply.records[0].ttl == 1   # inside a site: unregistered
    sock.close()
    assert system.scraped("lisp_map_registers_accepted_total") == 2


def test_refusals_and_garbage_are_counted_on_the_hub_and_the_thread_goes_on():
    """Garbage is counted by reason, requests beyond the source's rate are
    refused, every one of them counted once, and the thread answers again
    when the bucket has filled. Exact whatever the machine's load: the
    test waits for the datagrams to be seen, and allows for the tokens the
    bucket regained meanwhile (a burst into a kernel buffer the thread is
    too slow to empty would drop datagrams nobody counts)."""
    rate, sent = 20, 60
    s = System({**CONFIG, "lisp": {**CONFIG["lisp"], "request_rate": rate}})
    sock = client()
    try:
        garbage = (b"", b"\x20" * 30, b"\x80" + bytes(40), request("10.9.0.20")[:-3], bytes(range(256)))
        for data in garbage:
            sock.sendto(data, s.address)
        began = time.monotonic()
        for i in range(sent):
            sock.sendto(request("10.9.0.20"), s.address)
            if i % 10 == 9:
                eventlet.sleep(0.002)   # the thread reads as they come: the kernel drops none
        deadline = time.monotonic() + ANSWER_WAIT
        while s.scraped("lisp_control_datagrams_total") < len(garbage) + sent and time.monotonic() < deadline:
            eventlet.sleep(0.01)
        took = time.monotonic() - began
        eventlet.sleep(0.05)   # what the thread handed over is done on the hub
        assert s.scraped("lisp_control_datagrams_total") == len(garbage) + sent
        assert s.scraped("lisp_control_dropped_total", reason="empty") == 1
        assert s.scraped("lisp_control_dropped_total", reason="unhandled-type") == 2   # types 2 and 0
        assert s.scraped("lisp_map_requests_refused_total", reason="truncated") == 1
        limited = s.scraped("lisp_map_requests_refused_total", reason="rate-limited")
        answered = s.scraped("lisp_map_requests_total", outcome="answered")
        assert limited + answered == sent
        assert limited >= sent - rate - rate * took, (limited, took)   # a burst of `rate`, then `rate` a second
        sock.close()
        eventlet.sleep(1.1)   # the bucket fills again
        assert rlocs_of(ask(s, "10.9.0.20")) == ["192.0.2.1"]
    finally:
        sock.close()
        s.close()


def test_stopping_stops_the_thread_and_closes_the_socket():
    s = System()
    thread = s.ms.thread.thread
    assert thread.is_alive()
    s.close()
    assert not thread.is_alive()
    assert "lisp-control-listener" not in [t.name for t in threading.enumerate()]
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(s.address)   # the port is free again
    again.close()

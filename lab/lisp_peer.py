"""A foreign xTR's control plane, as much of it as the tests need: register
EID-prefixes with a Map-Server (and hear its Map-Notify), ask a Map-Resolver
with an Encapsulated Map-Request, and receive what comes back (Map-Replies,
forwarded requests). Built on the controller's own codec; not installed.

    peer = LispPeer(("172.31.255.1", 4342), AuthKey(1, b"key"))
    notify = peer.register([eid_record(1000, "10.2.1.0/24", ["192.168.1.253"])])
    reply = peer.request(1000, "10.1.1.30", itr_rloc="172.31.255.13")

Create it inside the namespace it should speak from (``testbed.netns``): the
socket stays there whichever thread uses it later.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import threading
import time

from lisp_controller.lisp import (AuthKey, EidRecord, InstanceIdAddress, LocatorRecord, MapRegister, MapRequest,
                                  MapRequestRecord, decode, encode, sign, verify, wrap_in_ecm)
from lisp_controller.lisp.addresses import LispDecodeError

MAP_SERVER_PORT = 4342


def eid_record(iid: int, prefix: str, rlocs: list, ttl: int = 3) -> EidRecord:
    """A record for ``prefix`` in ``iid``; each RLOC is an address or
    (address, priority, weight)."""
    network = ipaddress.ip_network(prefix)
    locators = []
    for rloc in rlocs:
        address, priority, weight = (rloc, 1, 100) if isinstance(rloc, str) else rloc
        locators.append(LocatorRecord(ipaddress.ip_address(address), priority, weight))
    return EidRecord(InstanceIdAddress(iid, network.network_address), network.prefixlen, tuple(locators), ttl,
                     authoritative=True)


class LispPeer:
    """One UDP socket speaking LISP control messages to ``server``."""

    def __init__(self, server: tuple[str, int], key: AuthKey | None = None, bind: tuple[str, int] = ("", 0),
                 xtr_id: bytes | None = None):
        self.server, self.key = server, key
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.xtr_id = xtr_id if xtr_id is not None else os.urandom(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def send(self, payload: bytes, target: tuple[str, int] | None = None) -> None:
        self.sock.sendto(payload, target or self.server)
        self.sent += 1

    def receive(self, timeout: float = 2.0):
        """(message, raw bytes, source) of the next datagram, or None."""
        self.sock.settimeout(timeout)
        try:
            raw, source = self.sock.recvfrom(65535)
        except (socket.timeout, BlockingIOError):
            return None
        try:
            return decode(raw), raw, source
        except LispDecodeError:
            return None, raw, source

    def register_bytes(self, records: list[EidRecord], want_map_notify: bool = True, proxy_reply: bool = False,
                       use_ttl_for_timeout: bool = True, nonce: bytes | None = None, key: AuthKey | None = None) -> bytes:
        message = MapRegister(nonce or os.urandom(8), tuple(records), proxy_reply=proxy_reply,
                              use_ttl_for_timeout=use_ttl_for_timeout, want_map_notify=want_map_notify,
                              xtr_id=self.xtr_id)
        return sign(message, key or self.key)

    def register(self, records: list[EidRecord], timeout: float = 2.0, **options):
        """Send a Map-Register; the Map-Notify that answers it (matched by
        nonce and verified with our key: ValueError if it does not verify),
        or None if none came within ``timeout``."""
        nonce = os.urandom(8)
        self.send(self.register_bytes(records, nonce=nonce, **options))
        if options.get("want_map_notify", True) is False:
            return None
        got = self.wait_for(lambda m: getattr(m, "nonce", None) == nonce and type(m).__name__ == "MapNotify",
                            timeout)
        if got is None:
            return None
        if not verify(got[1], options.get("key") or self.key):
            raise ValueError("the Map-Notify does not verify with our key")
        return got[0]

    def request_bytes(self, iid: int, eid: str, itr_rloc: str, nonce: bytes, reply_port: int | None = None) -> bytes:
        address = ipaddress.ip_address(eid)
        request = MapRequest(nonce, (MapRequestRecord(InstanceIdAddress(iid, address), address.max_prefixlen),),
                             (ipaddress.ip_address(itr_rloc),))
        inner_source = ipaddress.ip_address(itr_rloc) if address.version == ipaddress.ip_address(itr_rloc).version \
            else address
        return encode(wrap_in_ecm(request, inner_source, address, reply_port or self.address[1]))

    def request(self, iid: int, eid: str, itr_rloc: str, timeout: float = 2.0):
        """Send an Encapsulated Map-Request for ``eid``; the Map-Reply
        (matched by nonce), or None."""
        nonce = os.urandom(8)
        self.send(self.request_bytes(iid, eid, itr_rloc, nonce))
        got = self.wait_for(lambda m: getattr(m, "nonce", None) == nonce and type(m).__name__ == "MapReply",
                            timeout)
        return got[0] if got is not None else None

    def wait_for(self, accept, timeout: float):
        """(message, raw, source) of the next datagram ``accept`` takes
        (others are dropped), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self.receive(left)
            if got is not None and got[0] is not None and accept(got[0]):
                return got

    def keep_registering(self, records: list[EidRecord], interval: float = 1.0, **options) -> None:
        """Register ``records`` every ``interval`` seconds in a thread (an
        ETR's periodic Map-Register, RFC 9301 section 8.2) until ``stop``."""
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.send(self.register_bytes(records, want_map_notify=False, **options))
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.lisp_peer",
                                     description="register EID-prefixes with a Map-Server, as an ETR would")
    parser.add_argument("--map-server", required=True)
    parser.add_argument("--port", type=int, default=MAP_SERVER_PORT)
    parser.add_argument("--key-id", type=int, default=1)
    parser.add_argument("--key", required=True)
    parser.add_argument("--alg", choices=["sha1", "sha256"], default="sha256")
    parser.add_argument("--eid", action="append", required=True, metavar="IID:PREFIX")
    parser.add_argument("--rloc", action="append", required=True, metavar="ADDRESS[,PRIORITY,WEIGHT]")
    parser.add_argument("--ttl", type=int, default=3, help="registration lifetime, minutes")
    parser.add_argument("--proxy-reply", action="store_true")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between Map-Registers; 0: once")
    args = parser.parse_args(argv)
    rlocs = [tuple([p[0], int(p[1]), int(p[2])]) if len(p := r.split(",")) == 3 else r for r in args.rloc]
    records = [eid_record(int(e.split(":", 1)[0]), e.split(":", 1)[1], rlocs, args.ttl) for e in args.eid]
    peer = LispPeer((args.map_server, args.port), AuthKey(args.key_id, args.key.encode(),
                                                          2 if args.alg == "sha256" else 1))
    try:
        while True:
            notify = peer.register(records, proxy_reply=args.proxy_reply)  # verified, or ValueError
            print("registered" + (" (Map-Notify verified)" if notify is not None else " (no Map-Notify)"), flush=True)
            if not args.interval:
                return 0 if notify is not None else 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        peer.close()


if __name__ == "__main__":
    sys.exit(main())

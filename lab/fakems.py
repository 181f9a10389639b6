"""A small fake LISP mapping system for the tests: Map-Server and
Map-Resolver in one UDP socket, built on the project's codec.

It accepts Map-Registers signed with a known key (answering Map-Notify when
asked), withdraws records registered with TTL 0, and answers ECM
Map-Requests itself (proxy Map-Reply) from what was registered plus static
records, or with a negative Map-Reply. It is the peer the xTR tests talk to
until a second lisp-controller process can be the mapping system; it keeps
no state beyond what a test needs to assert on.

    python -m lab.fakems --listen 172.31.255.50 --key 1:secret \
        --mapping 1000:10.9.0.0/16:192.168.1.9 --state /tmp/ms.json
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field

from lisp_controller.lisp import (Action, EidRecord, EncapsulatedControlMessage, InstanceIdAddress,
                                  LispDecodeError, LocatorRecord, MapNotify, MapRegister, MapReply,
                                  MapRequest, decode, encode, sign, verify)
from lisp_controller.lisp.messages import LISP_CONTROL_PORT


@dataclass
class FakeMappingSystem:
    keys: dict[int, bytes]  # key-id -> password
    static: dict[tuple, EidRecord] = field(default_factory=dict)  # (iid, network) -> record
    negative_action: int = Action.DROP_NO_REASON
    negative_ttl: int = 1
    answer: bool = True  # False: swallow Map-Requests (a dead map-resolver)
    registered: dict[tuple, EidRecord] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    requests: list = field(default_factory=list)  # (source, MapRequest) as received
    last_notify: bytes = b""  # the last Map-Notify sent (a test replays it)

    def handle(self, data: bytes, source: tuple) -> list[tuple[bytes, tuple]]:
        """Datagrams to send back for one received, as (bytes, (host, port))."""
        try:
            message = decode(data)
        except LispDecodeError:
            self._count("malformed")
            return []
        if isinstance(message, MapRegister):
            return self._register(data, message, source)
        if isinstance(message, EncapsulatedControlMessage) and isinstance(message.message, MapRequest):
            self.requests.append((source, message.message))
            return self._request(message, source) if self.answer else []
        self._count("ignored")
        return []

    def _register(self, data: bytes, message: MapRegister, source: tuple) -> list:
        secret = self.keys.get(message.key_id)
        if secret is None or not verify(data, secret):
            self._count("bad_auth")
            return []
        for record in message.records:
            key = (record.eid.instance_id, _network(record))
            if record.ttl == 0:
                self.registered.pop(key, None)
            else:
                self.registered[key] = record
        self._count("registers")
        if not message.want_map_notify:
            return []
        notify = sign(MapNotify(message.nonce, message.records), secret, message.key_id, message.alg_id)
        self.last_notify = notify
        return [(notify, source)]

    def _request(self, ecm: EncapsulatedControlMessage, source: tuple) -> list:
        request = ecm.message
        records = []
        for asked in request.records:
            iid = asked.eid.instance_id
            address = asked.eid.address
            found = self.lookup(iid, address)
            if found is None:
                found = EidRecord(asked.eid, asked.mask_len, (), ttl=self.negative_ttl,
                                  action=self.negative_action)
            records.append(found)
        self._count("requests")
        reply = MapReply(request.nonce, tuple(records))
        rloc = request.itr_rlocs[0]
        return [(encode(reply), (str(rloc), ecm.inner_source_port))]

    def lookup(self, iid: int, address) -> EidRecord | None:
        exact = self.static.get((iid, ipaddress.ip_network(address)))  # a host mapping: no scan
        if exact is not None and not self.registered:
            return exact
        best = None
        for table in (self.static, self.registered):
            for (k_iid, network), record in table.items():
                if k_iid == iid and address.version == network.version and address in network:
                    if best is None or network.prefixlen > best[0].prefixlen:
                        best = (network, record)
        if best is None:
            return None
        record = best[1]
        return EidRecord(record.eid, record.mask_len, record.locators, ttl=record.ttl,
                         action=record.action, authoritative=False)

    def state(self) -> dict:
        return {"registered": sorted(f"{iid}:{network}" for iid, network in self.registered),
                "counts": dict(self.counts), "requests": len(self.requests),
                "last_notify": self.last_notify.hex()}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def _network(record: EidRecord):
    address = record.eid.address if isinstance(record.eid, InstanceIdAddress) else record.eid
    return ipaddress.ip_network(f"{address}/{record.mask_len}", strict=False)


def static_record(iid: int, prefix: str, rlocs: list[str], ttl: int = 1) -> EidRecord:
    network = ipaddress.ip_network(prefix)
    return EidRecord(InstanceIdAddress(iid, network.network_address), network.prefixlen,
                     tuple(LocatorRecord(ipaddress.ip_address(r)) for r in rlocs), ttl=ttl)


def serve(sock: socket.socket, ms: FakeMappingSystem, stop: threading.Event | None = None,
          state_path: str | None = None) -> None:
    """Answer datagrams on `sock` until `stop` is set (or forever)."""
    sock.settimeout(0.2)
    while stop is None or not stop.is_set():
        try:
            data, source = sock.recvfrom(65535)
        except socket.timeout:
            continue
        except OSError:
            return
        for reply, destination in ms.handle(data, source[:2]):
            sock.sendto(reply, destination)
        if state_path:
            with open(state_path + ".tmp", "w") as f:
                json.dump(ms.state(), f)
            os.replace(state_path + ".tmp", state_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.fakems")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=LISP_CONTROL_PORT)
    parser.add_argument("--key", action="append", default=[], metavar="ID:PASSWORD")
    parser.add_argument("--mapping", action="append", default=[], metavar="IID:PREFIX:RLOC[:TTL]")
    parser.add_argument("--hosts", action="append", default=[], metavar="IID:FIRST:COUNT:RLOC:TTL",
                        help="COUNT host mappings from address FIRST on (benchmarks)")
    parser.add_argument("--negative-ttl", type=int, default=1)
    parser.add_argument("--state", help="write what is registered here (JSON) after every datagram")
    args = parser.parse_args(argv)
    keys = {int(k): p.encode() for k, _, p in (item.partition(":") for item in args.key)}
    static = {}
    for item in args.mapping:
        iid, prefix, rloc, *ttl = item.split(":") if item.count(":") <= 3 else item.split(":", 3)
        record = static_record(int(iid), prefix, [rloc], int(ttl[0]) if ttl else 1)
        static[(int(iid), ipaddress.ip_network(prefix))] = record
    for item in args.hosts:
        iid, first, count, rloc, ttl = item.split(":")
        start = ipaddress.ip_address(first)
        for i in range(int(count)):
            host = ipaddress.ip_network(start + i)
            static[(int(iid), host)] = static_record(int(iid), str(host), [rloc], int(ttl))
    ms = FakeMappingSystem(keys, static, negative_ttl=args.negative_ttl)
    family = socket.AF_INET6 if ":" in args.listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: a benchmark's bursts of requests
    sock.bind((args.listen, args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    serve(sock, ms, state_path=args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())

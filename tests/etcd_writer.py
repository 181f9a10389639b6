"""A process that writes one bulk of mappings through the etcd store, for
tests that kill it midway (tests/test_etcd_store.py).

    python -m tests.etcd_writer ENDPOINTS PREFIX COUNT [--stop-after-chunk N] [--lease-ttl S]

Prints "staged N" after each chunk it writes and "committed" at the end;
with --stop-after-chunk it waits forever after that chunk, to be killed.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from lisp_controller.config import EtcdSettings
from lisp_controller.model import Mapping, Rloc, parse_prefix
from lisp_controller.store.etcd import EtcdStore


def bulk(count: int, base: int = 0) -> list[Mapping]:
    """`count` host mappings 10.x.y.z/32 in IID 1000, one shared RLOC set."""
    rlocs = (Rloc(ipaddress.ip_address("192.168.1.252")),)
    return [Mapping(1000, parse_prefix(str(ipaddress.IPv4Address(0x0A000000 + base + i)) + "/32"), rlocs,
                    source="api") for i in range(count)]


class Writer(EtcdStore):
    stop_after: int | None = None
    staged = 0

    def _put_chunk(self, key: str, chunk: bytes) -> None:
        super()._put_chunk(key, chunk)
        self.staged += 1
        print(f"staged {self.staged}", flush=True)
        if self.staged == self.stop_after:
            time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoints")
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("--stop-after-chunk", type=int)
    parser.add_argument("--lease-ttl", type=int, default=10)
    args = parser.parse_args()
    store = Writer(EtcdSettings(tuple(args.endpoints.split(",")), args.prefix), lease_ttl=args.lease_ttl)
    store.stop_after = args.stop_after_chunk
    store.load()
    mappings = bulk(args.count)
    print("writing", flush=True)
    store.write(put=mappings)
    print("committed", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

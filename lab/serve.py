"""`lisp-controller` with what only tests pass in: a faster clock and
syncs that fail on purpose. The real command line, the real process; the
product itself reads no test-only setting.

    python -m lab.serve [--time-scale 50] [--fail-syncs AFTER:COUNT] -- serve -c CONFIG ...

`--time-scale 50`: the controller's wall clock runs 50 times faster (one
minute of TTL is 1.2 s). `--fail-syncs 1:3`: on every bridge, the syncs
after the first one raise, three times in a row (the session must start
over and repair the bridge without the connection dropping).
`--no-lease-guard`: with an etcd store, a bridge's master does not check
its own lease before writing, so that a test can show the switch itself
refusing a stale master (docs/etcd.rst, "Bridge ownership").
`--stop-in-sync FILE`: the first sync of any bridge that starts while FILE
exists removes it and stops the whole process with SIGSTOP, there, in the
middle of a write, until the test sends SIGCONT: a master frozen
mid-write.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Callable


class InjectedFailure(RuntimeError):
    """Raised by `FailSyncs`: a failure the test asked for."""


class FailSyncs:
    """Before each sync of a bridge: let `after` through, then raise
    `count` times, then let every later one through."""

    def __init__(self, after: int, count: int):
        self.after, self.count = after, count
        self.seen: dict[str, int] = {}

    def __call__(self, label: str) -> None:
        n = self.seen[label] = self.seen.get(label, 0) + 1
        if self.after < n <= self.after + self.count:
            raise InjectedFailure(f"sync {n} made to fail by the test ({n - self.after} of {self.count})")


class StopInSync:
    """Before each sync: if `trigger` exists, remove it and SIGSTOP this
    process (the test resumes it with SIGCONT)."""

    def __init__(self, trigger: str, then: Callable[[str], None] | None = None):
        self.trigger, self.then = trigger, then

    def __call__(self, label: str) -> None:
        if os.path.exists(self.trigger):
            os.unlink(self.trigger)
            print(f"stopping in the sync of bridge {label} (SIGSTOP)", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            print(f"resumed in the sync of bridge {label}", flush=True)
        if self.then is not None:
            self.then(label)


def scaled_clock(scale: float) -> Callable[[], float]:
    origin = time.time()
    return lambda: origin + (time.time() - origin) * scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.serve")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--fail-syncs", metavar="AFTER:COUNT")
    parser.add_argument("--no-lease-guard", action="store_true")
    parser.add_argument("--stop-in-sync", metavar="FILE")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="lisp-controller's arguments, after --")
    args = parser.parse_args(argv)
    rest = args.command[1:] if args.command[:1] == ["--"] else args.command
    hook = None
    if args.fail_syncs:
        after, count = (int(x) for x in args.fail_syncs.split(":"))
        hook = FailSyncs(after, count)
    if args.stop_in_sync:
        hook = StopInSync(args.stop_in_sync, hook)
    clock = time.time if args.time_scale == 1 else scaled_clock(args.time_scale)
    from lisp_controller.__main__ import main as controller

    return controller(rest, clock=clock, before_sync=hook, lease_guard=not args.no_lease_guard)


if __name__ == "__main__":
    sys.exit(main())

"""`lisp-controller serve` as the lab runs it: the one launcher of
controller processes (`ServeProcess`) that the tests, the demo, the
benchmarks and the local cluster (lab/cluster.py) share, and, in the child,
the controller with what only tests pass in: a faster clock and syncs that
fail on purpose. The real command line, the real process; the product
itself reads no test-only setting.

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
`--watch-hub FILE`: write each stall of the hub (longer than 50 ms) and
each slow collection to FILE as JSON lines, with the stacks that held it
(lab/hubwatch.py; bench/hub.py `--watch`). `--watch-census MS`: after
a full collection longer than MS, also what the collector walked
(bench/hub.py `--census`).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from lab.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent  # where the child imports lab.serve from
Spawn = Callable[..., "subprocess.Popen[bytes]"]  # (args, env=, stdout=, stderr=) -> a started process


def spawn_here(args: Sequence[str], **popen_kw) -> "subprocess.Popen[bytes]":
    """Start a process in this network namespace, in a session of its own
    (a Ctrl-C meant for the lab does not reach it; the lab stops it)."""
    return subprocess.Popen(list(args), start_new_session=True, **popen_kw)


class ServeProcess:
    """One `lisp-controller serve -c CONFIG` process, its output in
    `log_path`, stopped only by its own PID.

    `spawn` starts it where it must run (default: this namespace; a
    testbed's namespace: ``functools.partial(testbed.spawn, ns)``).
    `store_path`: an SQLite store given with ``--store`` (none: the config's
    store). `hooks` are this module's options (a faster clock, failing
    syncs). `wrapper` is a command that execs the controller (e.g. nsenter
    into a mount namespace whose disk a test fills)."""

    def __init__(self, config_path: str | Path, log_path: Path, *, store_path: Path | None = None,
                 hooks: Sequence[str] = (), env: dict | None = None, wrapper: Sequence[str] = (),
                 spawn: Spawn = spawn_here):
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.store_path = store_path
        self.hooks = tuple(hooks)
        self.env = env or {}
        self.wrapper = tuple(wrapper)
        self._spawn = spawn
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServeProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        main = ["lisp_controller"]
        if self.hooks:
            main = ["lab.serve", *self.hooks, "--"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        store = ("--store", str(self.store_path)) if self.store_path is not None else ()
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn([*self.wrapper, sys.executable, "-m", *main, "serve", "-c",
                                     str(self.config_path), *store],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal it (SIGTERM: a clean stop; SIGKILL: kill -9) and wait for
        its exit status. Popen signals only a child it has not yet reaped,
        so a recycled PID is never hit."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stopped, whatever it is doing: SIGTERM, then SIGKILL."""
        if not self.running():
            return
        try:
            self.stop(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout=timeout,
                   what=f"{count}x {text!r} in {self.log_path}")


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
    parser.add_argument("--watch-hub", metavar="FILE")
    parser.add_argument("--watch-census", type=float, metavar="MS")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="lisp-controller's arguments, after --")
    args = parser.parse_args(argv)
    rest = args.command[1:] if args.command[:1] == ["--"] else args.command
    hook = None
    if args.fail_syncs:
        after, count = (int(x) for x in args.fail_syncs.split(":"))
        hook = FailSyncs(after, count)
    if args.stop_in_sync:
        hook = StopInSync(args.stop_in_sync, hook)
    if args.watch_hub:  # before eventlet patches threading and time
        from lab.hubwatch import HubWatch

        HubWatch(args.watch_hub, census=args.watch_census is not None,
                 census_after=(args.watch_census or 50) / 1000).start()
    clock = time.time if args.time_scale == 1 else scaled_clock(args.time_scale)
    from lisp_controller.__main__ import main as controller

    return controller(rest, clock=clock, before_sync=hook, lease_guard=not args.no_lease_guard)


if __name__ == "__main__":
    sys.exit(main())

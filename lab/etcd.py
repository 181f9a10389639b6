"""A throw-away etcd cluster on loopback: N members, one command.

Why it exists: the etcd store (docs/etcd.rst) must be tested against a real
cluster that loses members and quorum, and a person trying it needs one in
a second. Every member is a real ``etcd`` process (Debian's etcd-server)
listening on 127.0.0.1 (of this namespace, or of a lab namespace) on free
ports, with its data directory in a private temp dir.

Safety rules, as in lab/testbed.py: processes are started here and stopped
by their PID, only after checking that their command line names this
cluster's temp dir; teardown always runs (``with`` block, ``close()`` and
``atexit``); nothing listens beyond loopback.

``python -m lab.etcd`` runs one until Ctrl-C and prints the ``[store]``
section that points a controller at it.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from lab.console import stop_on_sigterm, until_interrupted
from lab.netns import netns
from lab.processes import cmdline, pid_alive, wait_until

ETCD = "etcd"


class EtcdError(RuntimeError):
    """The cluster could not be started or checked; the message says why."""


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_ports(count: int, ns: str | None = None) -> list[int]:
    """Ports nobody listens on now, on 127.0.0.1 of namespace `ns` (or this
    one). All are held open together, so they are distinct."""
    with (netns(ns) if ns else contextlib.nullcontext()):
        socks = []
        try:
            for _ in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()


# etcd grants a lease of at least 1.5 election timeouts, rounded up to a
# second: with these members a lease of 1 s is granted, and a killed
# master's bridges move in about 1.0 to 1.6 s (docs/etcd.rst, "Failover
# time"). The lab's clusters run with them unless told otherwise.
FAST_ELECTION = ("--heartbeat-interval=50", "--election-timeout=500")


class EtcdCluster:
    """`size` etcd members on 127.0.0.1, in namespace `ns` if given (then
    `ip netns exec` runs them, which execs: the PID is etcd's own).

    Defaults are etcd's own (heartbeat 100 ms, election 1 s, fsync on):
    what the guarantees of docs/etcd.rst rest on is what is tested.
    `extra_args` go to every member (e.g. ``--max-txn-ops=32``)."""

    __test__ = False

    def __init__(self, size: int = 3, ns: str | None = None, extra_args: Sequence[str] = (),
                 keep_tmp: bool = False):
        if shutil.which(ETCD) is None:
            raise EtcdError("etcd is not installed: run scripts/install.sh (Debian package etcd-server)")
        self.ns = ns
        self.extra_args = list(extra_args)
        self.keep_tmp = keep_tmp
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lab-etcd-"))
        self.token = f"lab-{secrets.token_hex(4)}"
        ports = free_ports(2 * size, ns)
        self.members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], self.tmpdir / f"m{i}.etcd",
                               self.tmpdir / f"m{i}.log") for i in range(size)]
        self._closed = False
        atexit.register(self.close)

    # -- what clients need ---------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def store_section(self, prefix: str = "/lisp-controller/") -> str:
        """The `[store]` TOML a controller needs to use this cluster."""
        urls = ", ".join(f'"{u}"' for u in self.endpoints)
        return f'[store]\nbackend = "etcd"\nendpoints = [{urls}]\nprefix = "{prefix}"\n'

    # -- life cycle ------------------------------------------------------------
    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        """Start every member and wait until the cluster has a leader."""
        for m in self.members:
            self._spawn(m, new=True)
        self.wait_healthy(timeout=timeout)
        return self

    def _spawn(self, m: Member, new: bool) -> None:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        args = [ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new" if new else "existing",
                "--logger", "zap", "--log-outputs", "stderr", *self.extra_args]
        prefix = ["ip", "netns", "exec", self.ns] if self.ns else []
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen([*prefix, *args], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def _owns(self, m: Member) -> bool:
        """Ours and alive: its command line names our temp dir (guards
        against a recycled PID)."""
        return m.proc is not None and pid_alive(m.proc.pid) and str(self.tmpdir) in cmdline(m.proc.pid)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Stop member `index` at once (kill -9 by default) by its PID."""
        m = self.members[index]
        if self._owns(m):
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.proc.pid, sig)
        if m.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(10)

    def restart(self, index: int) -> None:
        """Start a stopped member again on its data dir and ports."""
        m = self.members[index]
        if m.running():
            raise EtcdError(f"member {m.name} is still running (pid {m.pid})")
        self._spawn(m, new=False)

    # -- health -----------------------------------------------------------------
    def _get(self, m: Member, path: str, timeout: float = 2.0) -> dict | None:
        with (netns(self.ns) if self.ns else contextlib.nullcontext()):
            try:
                with urllib.request.urlopen(m.client_url + path, timeout=timeout) as r:
                    return json.loads(r.read())
            except (OSError, ValueError):
                return None

    def member_health(self, index: int) -> bool:
        """True when member `index` answers and sees a leader (etcd's own
        /health asks the cluster for a quorum read)."""
        answer = self._get(self.members[index], "/health")
        return bool(answer) and answer.get("health") == "true"

    def wait_healthy(self, indexes: Sequence[int] | None = None, timeout: float = 30.0) -> None:
        """Until every member in `indexes` (default: the running ones) is healthy."""
        picked = list(indexes) if indexes is not None else [i for i, m in enumerate(self.members)
                                                           if m.running()]

        def healthy() -> bool:
            for i in picked:
                if not self.members[i].running():
                    raise EtcdError(f"member {self.members[i].name} exited; its log:\n"
                                    + self.log(i)[-3000:])
            return all(self.member_health(i) for i in picked)
        wait_until(healthy, timeout=timeout, interval=0.1, what=f"etcd members {picked} healthy")

    def leader(self) -> int | None:
        """Index of the member that is leader now, as the members say."""
        for i, m in enumerate(self.members):
            if not m.running():
                continue
            status = _post(m.client_url + "/v3/maintenance/status", {}, self.ns)
            if status and status.get("leader") == status.get("header", {}).get("member_id"):
                return i
        return None

    def sees_leader(self, index: int) -> bool:
        """Whether member `index` believes some member leads (it may be a
        dead one, until an election timeout has passed)."""
        status = _post(self.members[index].client_url + "/v3/maintenance/status", {}, self.ns)
        return bool(status) and int(status.get("leader", 0)) != 0

    def log(self, index: int) -> str:
        return self.members[index].log_path.read_text(errors="replace")

    def close(self, timeout: float = 10.0) -> None:
        """Stop every member by PID (TERM, then KILL), remove the temp dir."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for m in self.members:
            if self._owns(m):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if self._owns(m):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(10)
        if not self.keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _post(url: str, body: dict, ns: str | None, timeout: float = 2.0) -> dict | None:
    with (netns(ns) if ns else contextlib.nullcontext()):
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None


@contextlib.contextmanager
def cluster(size: int = 3, ns: str | None = None, extra_args: Sequence[str] = ()) -> Iterator[EtcdCluster]:
    """A started cluster, closed on exit whatever happens."""
    c = EtcdCluster(size, ns, extra_args)
    try:
        yield c.start()
    finally:
        c.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.etcd", description=(
        "Run an etcd cluster on 127.0.0.1 (free ports, data in a temp dir) until Ctrl-C."))
    parser.add_argument("--size", type=int, default=3, help="members (default 3)")
    parser.add_argument("--etcd-defaults", action="store_true",
                        help="etcd's default timings (heartbeat 100 ms, election 1000 ms) instead of 50/500 ms: "
                             "etcd then grants no lease under 2 s")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with EtcdCluster(args.size, extra_args=() if args.etcd_defaults else FAST_ELECTION) as c:
        print(f"etcd cluster of {args.size} members (data and logs in {c.tmpdir}):")
        for m in c.members:
            print(f"  {m.name}: pid {m.pid}, client {m.client_url}, peer {m.peer_url}")
        print("\nput this in the controller's config:\n")
        print(c.store_section())
        print(f"try: ETCDCTL_API=3 etcdctl --endpoints={','.join(c.endpoints)} endpoint status -w table")
        until_interrupted("Ctrl-C stops every member and removes the data.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several lisp-controller instances sharing one etcd store: one command.

Why it exists: "more than one controller" (docs/etcd.rst) must be tried in
a minute and tested with real processes. This starts an etcd cluster
(lab/etcd.py) and `size` real `lisp-controller serve` processes through the
lab's one launcher (lab/serve.py), each with its own OpenFlow port, API
port and config file in a temp dir, all on the same ``[store]``.

Where they run: without a testbed, on 127.0.0.1 of this namespace (point
your own bridges at them); with one (lab/testbed.py), in its controller
namespace, on the management address the hypervisors reach.

``python -m lab.cluster`` runs one until Ctrl-C and prints how to reach
every instance and the ``ovs-vsctl set-controller`` line;
``--hypervisors 2`` also builds the lab's two hypervisors, each bridge
connected to every instance. Everything is stopped by PID and its temp
dirs removed on exit, whatever happens (``with``, ``close()``, atexit).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import http.client
import json
import re
import shutil
import signal
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from lab.etcd import EtcdCluster, free_ports
from lab.serve import ServeProcess, spawn_here
from lab.testbed import Testbed, _sigterm_as_interrupt, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "blog-two-hypervisors.toml"
NAMES = "abcdefghij"  # instance names, in order
LOOPBACK = "127.0.0.1"


@dataclass
class Instance:
    """One controller of the cluster and how to reach it."""

    name: str
    address: str  # its OpenFlow listen address
    of_port: int
    api_port: int  # on 127.0.0.1 of the namespace it runs in
    config_path: Path
    process: ServeProcess

    @property
    def target(self) -> tuple[str, int]:
        """(address, port), for Hypervisor.set_controllers."""
        return self.address, self.of_port

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid


# -- the instance configs (pure) ------------------------------------------------------------
def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string has JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} as a TOML value here")


def _table(name: str, values: dict) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"


def _without_tables(text: str, names: set[str]) -> str:
    """`text` without the top-level tables `names` (header to next header)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
        if header:
            skipping = header.group(1).split(".")[0] in names
        if not skipping:
            out.append(line)
    return "".join(out)


def instance_config(base: str, listen: str, of_port: int, api_port: int, store_section: str,
                    api: dict | None = None) -> str:
    """The config of one instance: `base` (the overlay every instance
    shares: bridges, mappings, its other [controller] and [api] keys) with
    this instance's listen address and ports, and the shared [store]."""
    parsed = tomllib.loads(base)
    controller = {**parsed.get("controller", {}), "listen": listen, "port": of_port}
    api_keys = {**parsed.get("api", {}), **(api or {}), "port": api_port}
    return (_without_tables(base, {"controller", "api", "store"}).rstrip() + "\n\n"
            + _table("controller", controller) + _table("api", api_keys) + store_section)


def api_call(port: int, method: str, path: str, body: object = None, testbed: Testbed | None = None,
             ns: str | None = None, timeout: float = 120) -> tuple[int, dict]:
    """One REST call to the API on 127.0.0.1:`port` of namespace `ns` (one
    of `testbed`'s) or of this one: status and JSON (or {"text": ...})."""
    with (testbed.netns(ns) if testbed is not None else contextlib.nullcontext()):
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
    return resp.status, (json.loads(data) if data[:1] in (b"{", b"[") else {"text": data.decode()})


# -- the cluster -------------------------------------------------------------------------
class LocalCluster:
    """An etcd cluster and `size` controllers on it. With `testbed`, both
    run in its controller namespace (made here if it has none yet) and the
    controllers listen on its management address; otherwise on 127.0.0.1
    here. `config` is the overlay every instance shares; `api` adds [api]
    keys (say, confirm_timeout); `hooks` are lab/serve.py's options."""

    __test__ = False

    def __init__(self, size: int = 3, *, config: str | Path = DEFAULT_CONFIG, testbed: Testbed | None = None,
                 etcd_size: int = 3, api: dict | None = None, hooks: Sequence[str] = (),
                 prefix: str = "/lisp-controller/", keep_tmp: bool = False):
        if not 1 <= size <= len(NAMES):
            raise ValueError(f"size must be 1 to {len(NAMES)}")
        self.size, self.testbed, self.api_extra, self.hooks = size, testbed, api or {}, tuple(hooks)
        self.prefix, self.keep_tmp = prefix, keep_tmp
        self.config_path = Path(config)
        self.base = self.config_path.read_text()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lab-cluster-"))
        self.ns: str | None = None
        self.address = LOOPBACK
        if testbed is not None:
            ctl = testbed.controller or testbed.add_controller()
            self.ns, self.address = ctl.ns, ctl.address
        self.etcd = EtcdCluster(etcd_size, ns=self.ns)
        self.instances: list[Instance] = []
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spawn(self):
        """Where a controller process starts: the testbed's namespace, or here."""
        return functools.partial(self.testbed.spawn, self.ns) if self.testbed is not None else spawn_here

    def start(self, timeout: float = 60.0) -> "LocalCluster":
        """The etcd members, then every controller, until each API answers."""
        self.etcd.start()
        ports = free_ports(2 * self.size, self.ns)
        store = self.etcd.store_section(self.prefix)
        for i in range(self.size):
            name = NAMES[i]
            of_port, api_port = ports[2 * i], ports[2 * i + 1]
            path = self.tmpdir / f"{name}.toml"
            path.write_text(instance_config(self.base, self.address, of_port, api_port, store, self.api_extra))
            process = ServeProcess(path, self.tmpdir / f"{name}.log", hooks=self.hooks, spawn=self.spawn)
            self.instances.append(Instance(name, self.address, of_port, api_port, path, process))
        for instance in self.instances:
            instance.process.start()
        for instance in self.instances:
            self.wait_up(instance, timeout)
        return self

    def wait_up(self, instance: Instance, timeout: float = 60.0) -> None:
        """Until the instance's API answers (a killed one: until it is back)."""
        def up() -> bool:
            if not instance.process.running():
                raise RuntimeError(f"instance {instance.name} exited:\n{instance.process.log()[-3000:]}")
            try:
                self.api(instance, "GET", "/v1/health", timeout=2)
                return True
            except OSError:
                return False
        wait_until(up, timeout=timeout, interval=0.1, what=f"the API of instance {instance.name}")

    def restart(self, instance: Instance, timeout: float = 60.0) -> None:
        """Start a stopped (or killed) instance again, same config and ports."""
        if instance.process.running():
            raise RuntimeError(f"instance {instance.name} is still running (pid {instance.pid})")
        instance.process.start()
        self.wait_up(instance, timeout)

    # -- talking to it ---------------------------------------------------------------------
    def api(self, instance: Instance, method: str, path: str, body: object = None,
            timeout: float = 120) -> tuple[int, dict]:
        """One REST call to `instance` (from its namespace): status and JSON."""
        return api_call(instance.api_port, method, path, body, self.testbed, self.ns, timeout)

    def set_controller_line(self, bridge: str = "br") -> str:
        """The command that connects a bridge to every instance."""
        return f"ovs-vsctl set-controller {bridge} " + " ".join(
            f"tcp:{i.address}:{i.of_port}" for i in self.instances)

    def describe(self) -> str:
        where = f"in namespace {self.ns}" if self.ns else "here"
        lines = [f"etcd: {len(self.etcd.members)} members {where} ({', '.join(self.etcd.endpoints)})"]
        for i in self.instances:
            lines.append(f"instance {i.name}: pid {i.pid}, OpenFlow tcp:{i.address}:{i.of_port}, "
                         f"API {i.api_url} {where}\n    config {i.config_path}\n    log    {i.process.log_path}")
        return "\n".join(lines)

    # -- the end ------------------------------------------------------------------------------
    def close(self) -> None:
        """Every controller, then every etcd member, stopped by PID; temp dirs removed."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            for instance in self.instances:
                instance.process.close()
        finally:
            self.etcd.close()
            if not self.keep_tmp:
                shutil.rmtree(self.tmpdir, ignore_errors=True)


@contextlib.contextmanager
def cluster(size: int = 3, **kw) -> Iterator[LocalCluster]:
    """A started cluster (LocalCluster's arguments), closed on exit whatever happens."""
    with LocalCluster(size, **kw) as c:
        yield c


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.cluster", description=(
        "Run three etcd members and three lisp-controller instances sharing them until Ctrl-C."))
    parser.add_argument("--size", type=int, default=3, help="controller instances (default 3)")
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG),
                        help="the overlay every instance serves (default: the blog's two hypervisors)")
    parser.add_argument("--hypervisors", type=int, default=0, metavar="N",
                        help="also build the config's N hypervisors and VMs (needs root), every "
                             "bridge connected to every instance")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    with contextlib.ExitStack() as stack:
        testbed = ov = None
        if args.hypervisors:
            from lab.scenario import build

            testbed = stack.enter_context(Testbed())
            ov = build(testbed, args.config)
            if len(ov.hypervisors) != args.hypervisors:
                parser.error(f"{args.config} describes {len(ov.hypervisors)} bridges, not {args.hypervisors}")
        c = stack.enter_context(LocalCluster(args.size, config=args.config, testbed=testbed))
        print(c.describe())
        if ov is None:
            print("\nconnect a bridge to every instance:\n  " + c.set_controller_line())
            print(f"try: curl {c.instances[0].api_url}/v1/datapaths")
        else:
            from lab.scenario import wait_programmed

            for hv in ov.hypervisors:
                hv.set_controllers(hv.bridge, [i.target for i in c.instances])
            wait_programmed(ov)
            print(f"\nhypervisors (namespaces of run {testbed.prefix}), each bridge on every instance, as "
                  + c.set_controller_line(ov.hypervisors[0].bridge) + ":")
            for hv in ov.hypervisors:
                print(f"  {hv.name}: bridge {hv.bridge} ({hv.datapath_id}), RLOC {hv.rloc}, "
                      f"OVS_RUNDIR={hv.rundir} ip netns exec {hv.ns} ovs-ofctl -O OpenFlow13 dump-flows {hv.bridge}")
            for vm in ov.vms:
                print(f"  {vm.name} ({vm.ip}): ip netns exec {vm.ns} ping ...")
            print(f"try: ip netns exec {c.ns} curl {c.instances[0].api_url}/v1/datapaths")
        print("Ctrl-C stops everything and removes it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

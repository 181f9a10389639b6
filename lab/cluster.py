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
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from lab.etcd import FAST_ELECTION, EtcdCluster, free_ports
from lab.serve import ServeProcess, spawn_here
from lab.console import stop_on_sigterm, until_interrupted
from lab.nodes import Hypervisor
from lab.processes import wait_until
from lab.testbed import Testbed
from lisp_controller.config import ClusterSettings

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
    # lab/serve.py's --stop-in-sync file (with LocalCluster(stoppable=True)):
    # created, it stops the instance with SIGSTOP in its next sync.
    trigger: Path

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

    def log(self) -> str:
        return self.process.log()


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
                    api: dict | None = None, controller: dict | None = None,
                    cluster: dict | None = None) -> str:
    """The config of one instance: `base` (the overlay every instance
    shares: bridges, mappings, its other [controller] and [api] keys) with
    this instance's listen address and ports, the shared [store], and
    `api`, `controller` and `cluster` keys added ([cluster] only if given:
    it exists only with an etcd store)."""
    parsed = tomllib.loads(base)
    controller_keys = {**parsed.get("controller", {}), **(controller or {}), "listen": listen, "port": of_port}
    api_keys = {**parsed.get("api", {}), **(api or {}), "port": api_port}
    cluster_table = _table("cluster", {**parsed.get("cluster", {}), **cluster}) if cluster is not None else ""
    return (_without_tables(base, {"controller", "api", "store", "cluster"}).rstrip() + "\n\n"
            + _table("controller", controller_keys) + _table("api", api_keys) + store_section + "\n"
            + cluster_table)


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


def switch_roles(hv: Hypervisor) -> dict[str, dict[int, str]]:
    """The role the switch gives each controller connection, by bridge
    and OpenFlow port: the switch's own view (OVS's Controller table;
    "disconnected" while not connected). Two ovs-vsctl calls for every
    bridge of the hypervisor's ovs-vswitchd."""
    def rows(table: str, columns: str) -> list:
        return json.loads(hv.vsctl("--format=json", f"--columns={columns}", "list", table))["data"]

    def uuids(cell: list) -> list[str]:  # an OVSDB set (or a single uuid) as JSON
        return [u for _, u in cell[1]] if cell[0] == "set" else [cell[1]]

    controllers = {uuid: (int(target.rsplit(":", 1)[1]),
                          (role if isinstance(role, str) else "other") if connected else "disconnected")
                   for (_, uuid), target, role, connected in rows("Controller", "_uuid,target,role,is_connected")}
    return {name: dict(controllers[u] for u in uuids(cell) if u in controllers)
            for name, cell in rows("Bridge", "name,controller")}


def switch_master(hv: Hypervisor, bridge: str | None = None) -> int | None:
    """The OpenFlow port of the controller the switch holds as master of
    `bridge` (default: the hypervisor's VM bridge)."""
    roles = switch_roles(hv).get(bridge or hv.bridge, {})
    masters = [port for port, role in roles.items() if role == "master"]
    assert len(masters) <= 1, f"{hv.name}: two masters at once: {roles}"
    return masters[0] if masters else None


SWITCH_CHANGES = ("rev_flow_table", "dpif_meter_set")  # flow table changes (flow, group mods), meter sets


def switch_changes(hv: Hypervisor) -> dict[str, int]:
    """The ovs-vswitchd's own totals of flow table changes (every flow-mod
    and group-mod, even one that changes nothing) and meter sets, once it
    has folded its threads' counts in (once a second): the switch's word
    on whether a controller sent anything."""
    def counts() -> dict[str, int]:
        text = hv.appctl("coverage/show")
        found = {n: int(m.group(1)) for n in SWITCH_CHANGES
                 if (m := re.search(rf"^{n}\s.*total: (\d+)$", text, re.M))}
        return {n: found.get(n, 0) for n in SWITCH_CHANGES}  # "never hit" counters are not listed
    last = counts()
    while True:
        time.sleep(1.2)
        now = counts()
        if now == last:
            return now
        last = now


# -- the cluster -------------------------------------------------------------------------
class LocalCluster:
    """An etcd cluster and `size` controllers on it. With `testbed`, both
    run in its controller namespace (made here if it has none yet) and the
    controllers listen on its management address; otherwise on 127.0.0.1
    here. `config` is the overlay every instance shares; `api` and
    `controller` add keys to those tables (say, confirm_timeout);
    `lease_ttl` is [cluster]'s (default: the controller's, 1 s); each
    instance's [cluster] instance is its name ("a", "b"...). `etcd_args`
    go to every etcd member: by default FAST_ELECTION, which lets etcd
    grant that lease of 1 s (() runs etcd's default timings, whose
    minimum lease is 2 s). `hooks` are lab/serve.py's options;
    `stoppable` adds its --stop-in-sync with each instance's `trigger`
    file."""

    __test__ = False

    def __init__(self, size: int = 3, *, config: str | Path = DEFAULT_CONFIG, testbed: Testbed | None = None,
                 etcd_size: int = 3, api: dict | None = None, controller: dict | None = None,
                 lease_ttl: int | None = None, etcd_args: Sequence[str] = FAST_ELECTION, hooks: Sequence[str] = (),
                 stoppable: bool = False, prefix: str = "/lisp-controller/", keep_tmp: bool = False):
        if not 1 <= size <= len(NAMES):
            raise ValueError(f"size must be 1 to {len(NAMES)}")
        self.size, self.testbed, self.api_extra, self.hooks = size, testbed, api or {}, tuple(hooks)
        self.controller_extra, self.stoppable = controller or {}, stoppable
        self.cluster_extra = {} if lease_ttl is None else {"lease_ttl": lease_ttl}
        self.prefix, self.keep_tmp = prefix, keep_tmp
        self.config_path = Path(config)
        self.base = self.config_path.read_text()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lab-cluster-"))
        self.ns: str | None = None
        self.address = LOOPBACK
        if testbed is not None:
            ctl = testbed.controller or testbed.add_controller()
            self.ns, self.address = ctl.ns, ctl.address
        self.etcd = EtcdCluster(etcd_size, ns=self.ns, extra_args=etcd_args)
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
    def lease_ttl(self) -> int:
        """The [cluster] lease_ttl every instance runs with."""
        return self.cluster_extra.get("lease_ttl", ClusterSettings.lease_ttl)

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
            path.write_text(instance_config(self.base, self.address, of_port, api_port, store, self.api_extra,
                                            self.controller_extra, {"instance": name, **self.cluster_extra}))
            trigger = self.tmpdir / f"{name}.stop"
            hooks = (*self.hooks, "--stop-in-sync", str(trigger)) if self.stoppable else self.hooks
            process = ServeProcess(path, self.tmpdir / f"{name}.log", hooks=hooks, spawn=self.spawn)
            self.instances.append(Instance(name, self.address, of_port, api_port, path, process, trigger))
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
        lines = [f"etcd: {len(self.etcd.members)} members {where} ({', '.join(self.etcd.endpoints)}), "
                 f"flags {' '.join(self.etcd.extra_args) or '(etcd defaults)'}; lease_ttl {self.lease_ttl} s"]
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
    parser.add_argument("--etcd-defaults", action="store_true",
                        help="run the etcd members with etcd's default timings (heartbeat 100 ms, election "
                             "1000 ms) instead of 50/500 ms: etcd then grants no lease under 2 s")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with contextlib.ExitStack() as stack:
        testbed = ov = None
        if args.hypervisors:
            from lab.scenario import build

            testbed = stack.enter_context(Testbed())
            ov = build(testbed, args.config)
            if len(ov.hypervisors) != args.hypervisors:
                parser.error(f"{args.config} describes {len(ov.hypervisors)} bridges, not {args.hypervisors}")
        c = stack.enter_context(LocalCluster(args.size, config=args.config, testbed=testbed,
                                             etcd_args=() if args.etcd_defaults else FAST_ELECTION))
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
        until_interrupted("Ctrl-C stops everything and removes it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

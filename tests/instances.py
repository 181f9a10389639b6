"""Several `lisp-controller serve` instances on one etcd cluster, and the
testbed's bridges connected to all of them (docs/etcd.rst, "Bridge
ownership"). Real processes, real etcd, real OVS; each instance stopped
by its PID at teardown (the testbed's own children)."""
from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lab.etcd import EtcdCluster
from lab.scenario import ControllerProcess, Topology
from lab.testbed import Hypervisor, wait_until

# etcd grants a lease of at least 1.5 election timeouts, rounded up to a
# second: these let a lease of 1 s be granted (docs/etcd.rst).
FAST_ELECTION = ("--heartbeat-interval=50", "--election-timeout=500")


@dataclass
class Instance:
    name: str
    of_port: int
    api_port: int
    process: ControllerProcess
    trigger: Path  # lab/serve.py --stop-in-sync: created, it stops the instance in its next sync

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def log(self) -> str:
        return self.process.log()


def start_instances(ov: Topology, cluster: EtcdCluster, tmp_path: Path, count: int = 3, lease_ttl: int = 1,
                    hooks: tuple[str, ...] = (), reconcile_interval: int = 60) -> list[Instance]:
    """`count` instances (c1, c2...) with the overlay's config, each on
    its own OpenFlow and API port, sharing `cluster`; then every bridge
    is pointed at all of them (one ovs-vsctl command, never without a
    controller: a secure bridge with none left flushes its flows)."""
    base = ov.config_path.read_text()
    base = re.sub(r"(?m)^port = 6653.*$", "port = {of}", base)
    base = re.sub(r"(?m)^\[controller\]$", f"[controller]\nreconcile_interval = {reconcile_interval}", base)
    instances = []
    for k in range(count):
        name, of_port, api_port = f"c{k + 1}", 6653 + k, 18080 + k
        trigger = tmp_path / f"{name}.stop"
        config = tmp_path / f"{name}.toml"
        config.write_text(base.replace("{of}", str(of_port)) + f"\n[api]\nport = {api_port}\n\n"
                          + cluster.store_section() + f'\n[cluster]\ninstance = "{name}"\nlease_ttl = {lease_ttl}\n')
        process = ControllerProcess(ov, f"ctl-{name}", config_path=config,
                                    hooks=("--stop-in-sync", str(trigger), *hooks)).start()
        instances.append(Instance(name, of_port, api_port, process, trigger))
    for inst in instances:
        wait_until(lambda: _up(ov, inst.api_port), timeout=30, what=f"instance {inst.name}'s API")
    for hv in ov.hypervisors:
        connect_all(hv, ov.controller_ns.address, [i.of_port for i in instances])
    return instances


def connect_all(hv: Hypervisor, address: str, ports: list[int]) -> None:
    """Point the VM bridge at every instance, in one transaction."""
    args = []
    for n, port in enumerate(ports):
        args += ["--", f"--id=@c{n}", "create", "Controller", f'target="tcp:{address}:{port}"', "max_backoff=1000"]
    hv.vsctl(*args, "--", "set", "Bridge", hv.bridge, "controller=[" + ",".join(f"@c{n}" for n in range(len(ports))) + "]")


def switch_roles(hv: Hypervisor) -> dict[int, str]:
    """The role the switch gives each controller connection, by OpenFlow
    port: the switch's own view (OVS's Controller table)."""
    out = hv.vsctl("--format=json", "--columns=target,role,is_connected", "list", "Controller")
    roles = {}
    for target, role, connected in json.loads(out)["data"]:
        port = int(target.rsplit(":", 1)[1])
        roles[port] = role if connected else "disconnected"
    return roles


def switch_master(hv: Hypervisor) -> int | None:
    """The OpenFlow port of the controller the switch holds as master."""
    masters = [port for port, role in switch_roles(hv).items() if role == "master"]
    assert len(masters) <= 1, f"{hv.name}: two masters at once: {switch_roles(hv)}"
    return masters[0] if masters else None


def api(ov: Topology, port: int, method: str, path: str, body: object = None,
        timeout: float = 60) -> tuple[int, dict]:
    with ov.testbed.netns(ov.controller_ns.ns):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


def _up(ov: Topology, port: int) -> bool:
    try:
        return api(ov, port, "GET", "/v1/instances", timeout=2)[0] == 200
    except OSError:
        return False

"""The two-hypervisor demo: the seed blog's setup, driven by the controller.

Builds the hypervisors and VMs of a config in network namespaces, starts
`lisp-controller serve`, prints the flows it installed on each bridge, and
pings between the VMs. `--datapath dpdk` runs every hypervisor on OVS's
DPDK build (docs/datapath.rst, "OVS-DPDK") and also shows the DPDK ports
and the tunnel in the datapath flows. Everything is torn down at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab.scenario import ControllerProcess, build, wait_programmed
from lab.nodes import DATAPATHS
from lab.testbed import Testbed

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "blog-two-hypervisors.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__)
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--count", type=int, default=5, help="pings each way")
    parser.add_argument("--hold", action="store_true",
                        help="keep everything running until Enter is pressed")
    parser.add_argument("--datapath", default="netdev", choices=DATAPATHS,
                        help="netdev: OVS's userspace datapath; dpdk: its DPDK build, DPDK ports")
    args = parser.parse_args(argv)
    with Testbed(datapath=args.datapath) as tb:
        print(f"== building the topology of {args.config} on the {args.datapath} datapath "
              f"(run prefix {tb.prefix})")
        ov = build(tb, args.config)
        ctl = ControllerProcess(ov).start()
        print(f"== lisp-controller serve -c {args.config}  (log: {ctl.log_path})")
        wait_programmed(ov)
        for hv in ov.hypervisors:
            ports = ", ".join(f"{n}={p}" for n, p in sorted(hv.port_numbers().items())
                              if p < 0xFF00)  # not the LOCAL port
            print(f"\n== flows on {hv.name} (bridge {hv.bridge}, datapath {hv.datapath_id}, "
                  f"RLOC {hv.rloc}; ports {ports})")
            for line in hv.dump_flows():
                print("  " + line)
            if args.datapath == "dpdk":
                for port in (hv.underlay_iface, *(vm.port_name for vm in hv.vms)):
                    status = hv.interface_status(port)
                    print(f"  DPDK port {port}: {status.get('driver_name')} ({status.get('if_descr')})")
        ok = True
        print()
        for src in ov.vms:
            for dst in ov.vms:
                if src is dst:
                    continue
                src.wait_reachable(dst.ip)  # first packets wait for OVS to ARP the RLOC
                sent, received = src.ping(dst.ip, count=args.count)
                loss = 100 * (sent - received) // sent
                print(f"== ping {src.name} ({src.ip}) -> {dst.name} ({dst.ip}): "
                      f"{sent} sent, {received} received, {loss}% loss")
                ok &= received == sent
        for hv in ov.hypervisors:
            print(f"\n== datapath flows on {hv.name} (ovs-appctl dpctl/dump-flows)")
            for line in hv.appctl("dpctl/dump-flows").splitlines():
                if "tnl_push" in line or "tnl_pop" in line:
                    print("  " + line)
        if args.hold:
            print(f"\nnamespaces: {' '.join(sorted(tb.namespaces))}\npress Enter to tear down")
            sys.stdin.readline()
        print("\n== controller log\n" + "".join("  " + l for l in ctl.log().splitlines(True)
                                               if "lisp_controller" in l))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

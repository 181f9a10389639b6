"""`lisp-controller`: the command line. The only place that sets up the hub.

os-ken 4.x defaults to native threads and ships no manager; `serve` selects
its eventlet hub and monkey-patches before os_ken is first imported, so
nothing else (tests, tools importing the package) is ever patched.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .config import ConfigError, load_config


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{path}: {len(e.problems)} problem(s); nothing started", file=sys.stderr)
        return None


def cmd_check_config(args) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    ov = config.overlay
    print(f"{args.config}: ok: {len(ov.bridges)} bridges, "
          f"{sum(len(b.endpoints) for b in ov.bridges)} endpoints, {len(ov.mappings)} mappings; "
          f"OpenFlow on {config.openflow_host}:{config.openflow_port}")
    return 0


def cmd_flows(args) -> int:
    """Print the flows a bridge would get, for reading and for diffing."""
    from .compiler import compile_bridge
    from .flows import render

    config = _load(args.config)
    if config is None:
        return 2
    matches = [b for b in config.overlay.bridges if args.bridge in (b.label, b.name, f"{b.datapath_id or 0:016x}")]
    if len(matches) != 1:
        print(f"error: bridge {args.bridge!r} " + ("is ambiguous" if matches else "is not in the config"),
              file=sys.stderr)
        return 2
    ports = {}
    for item in args.port:
        name, _, number = item.partition("=")
        if not number.isdigit():
            print(f"error: --port {item!r}: expected NAME=NUMBER", file=sys.stderr)
            return 2
        ports[name] = int(number)
    compiled = compile_bridge(matches[0], ports, config.overlay)
    for flow in sorted(compiled.flows.values()):
        print(render(flow))
    if compiled.missing_ports:
        print(f"# ports without a number (their flows are left out): {', '.join(compiled.missing_ports)}",
              file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["OSKEN_HUB_TYPE"] = "eventlet"
    # eventlet announces its own deprecation on import; os-ken 4.2 needs it.
    warnings.filterwarnings("ignore", message="\nEventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller
    from os_ken.lib import hub

    cfg.CONF([], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", config.openflow_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", config.openflow_port)
    logging.getLogger("lisp_controller").info(
        "config %s: %d bridges; OpenFlow on %s:%d", config.source, len(config.overlay.bridges),
        config.openflow_host, config.openflow_port)
    manager = AppManager.get_instance()
    manager.load_apps(["os_ken.controller.ofp_handler", "lisp_controller.app"])
    contexts = manager.create_contexts()
    services = manager.instantiate_apps(lisp_config=config, **contexts)
    services.append(hub.spawn(controller.OpenFlowController()))
    try:
        hub.joinall(services)
    except KeyboardInterrupt:
        pass
    finally:
        manager.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lisp-controller",
                                     description="OpenFlow controller that makes OVS bridges LISP tunnel routers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the controller")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("config")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("flows", help="print the flows the controller would install on a bridge")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--bridge", required=True, help="bridge label, name or datapath ID")
    p.add_argument("--port", action="append", default=[], metavar="NAME=NUMBER",
                   help="OpenFlow port number of a port (repeat)")
    p.set_defaults(func=cmd_flows)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

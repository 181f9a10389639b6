"""`lisp-controller`: the command line. The only place that sets up the hub.

os-ken 4.x defaults to native threads and ships no manager; `serve` selects
its eventlet hub and monkey-patches before os_ken is first imported, so
nothing else (tests, tools importing the package) is ever patched.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
import warnings
from typing import Callable

from lisp_controller.config import ETCD_PASSWORD_ENV, TOKEN_ENV, ConfigError, load_config
from lisp_controller.errors import LispControllerError


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
    lisp = config.lisp
    control = f"; LISP control on {lisp.listen}:{lisp.port}, {len(lisp.sites)} sites" if lisp.enabled else ""
    cluster = config.cluster
    instance = f"; instance {cluster.instance} (lease {cluster.lease_ttl} s)" if cluster else ""
    print(f"{args.config}: ok: {len(ov.bridges)} bridges, "
          f"{sum(len(b.endpoints) for b in ov.bridges)} endpoints, {len(ov.mappings)} mappings; "
          f"OpenFlow on {config.openflow_host}:{config.openflow_port}{control}{instance}")
    return 0


def cmd_flows(args) -> int:
    """Print the flows a bridge would get, for reading and for diffing."""
    from lisp_controller.pipeline.compiler import compile_bridge, compile_overlay, groups_of
    from lisp_controller.pipeline.flows import render, render_group

    config = _load(args.config)
    if config is None:
        return 2
    matches = [b for b in config.overlay.bridges if b.answers_to(args.bridge)]
    if len(matches) != 1:
        print(f"error: bridge {args.bridge!r} " + ("is ambiguous: use the datapath ID" if matches
                                                   else "is not in the config"), file=sys.stderr)
        return 2
    ports = {}
    for item in args.port:
        name, _, number = item.partition("=")
        if not number.isdigit():
            print(f"error: --port {item!r}: expected NAME=NUMBER", file=sys.stderr)
            return 2
        ports[name] = int(number)
    compiled = compile_bridge(matches[0], ports, compile_overlay(config.overlay))
    for _, group in sorted(groups_of(compiled.flows.values()).items()):
        print(f"# group (ovs-ofctl add-group): {render_group(group)}")
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
    log = logging.getLogger("lisp_controller")
    if args.store and config.etcd is not None:
        print(f"error: --store names an SQLite file, but {args.config} keeps the store in etcd", file=sys.stderr)
        return 2
    from lisp_controller.api.guard import exposure_problem

    token = os.environ.get(TOKEN_ENV) or config.api.token
    problem = exposure_problem(config.api.host, token)
    if problem:
        print(f"error: {config.source}: {problem}; nothing started", file=sys.stderr)
        return 2
    lock = _NoLock()  # an etcd store is shared by design (docs/etcd.rst); an SQLite file is not
    if config.etcd is None:
        try:
            lock = _lock_store(args.store or config.store_path, log)  # held until the process ends
        except StoreLocked as e:
            print(f"error: {e}", file=sys.stderr)
            print("nothing started: one controller per store (stop the other, or give this one "
                  "its own store and ports)", file=sys.stderr)
            return 3

    os.environ["OSKEN_HUB_TYPE"] = "eventlet"
    # eventlet announces its own deprecation on import; os-ken 4.2 needs it.
    warnings.filterwarnings("ignore", message="\nEventlet is deprecated")
    import eventlet

    # Before the store opens: the etcd store's connections and watch are green.
    eventlet.monkey_patch()
    from lisp_controller.controller.state import State
    from lisp_controller.store import StoreError, open_store

    membership = None
    try:
        store = open_store(config, args.store, os.environ.get(ETCD_PASSWORD_ENV))
        mappings, endpoints = store.load()
        state = State(config, clock=args.clock)
        _merge_store(state, store, mappings, endpoints, log)
        if config.etcd is not None:  # several instances: which bridges this one masters (docs/etcd.rst)
            from lisp_controller.store.membership import Membership

            membership = Membership(config.etcd, config.cluster, os.environ.get(ETCD_PASSWORD_ENV),
                                    guard=args.lease_guard)
            membership.start()
            store.share_lease(membership.lease, membership.me)  # one lease per instance (docs/etcd.rst)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        print("nothing started: " + ("the etcd cluster must answer" if config.etcd else
                                     "fix or move the store file") + " (the config is fine)", file=sys.stderr)
        return 3

    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.lib import hub

    from lisp_controller.api import server as http
    from lisp_controller.api.rest import Api
    from lisp_controller.controller.app import LispControllerApp
    from lisp_controller.openflow import tls
    from lisp_controller.openflow.admission import Admission
    from lisp_controller.openflow.listener import Handshake, Listener, listen

    try:  # unusable keys or certificates stop the start, before anything listens
        of_tls = config.tls and tls.server_context(config.tls.cert, config.tls.key, config.tls.ca)
        api_tls = config.api.tls_cert and tls.server_context(config.api.tls_cert, config.api.tls_key)
    except tls.TlsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    # Both ports are opened here, before anything starts, and never shared
    # (no SO_REUSEPORT): a second controller on them stops with this message.
    sockets = {}
    for what, host, port, backlog in (("OpenFlow", config.openflow_host, config.openflow_port, None),
                                      ("the API", config.api.host, config.api.port, http.BACKLOG)):
        try:
            sockets[what] = listen(host, port, **({"backlog": backlog} if backlog else {}))
        except OSError as e:
            print(f"error: cannot listen on {host}:{port} for {what}: {e.strerror or e}"
                  + (" (another lisp-controller?)" if e.errno == errno.EADDRINUSE else ""), file=sys.stderr)
            print("nothing started", file=sys.stderr)
            return 3
    api_socket = sockets["the API"]
    control_socket = None
    if config.xtr.active:
        from lisp_controller.lisp.xtr import open_control_socket
        try:
            control_socket = open_control_socket(config.xtr.control_address)
        except OSError as e:
            print(f"error: cannot listen on {config.xtr.control_address} port 4342 for the LISP control "
                  f"plane (lisp.control_address): {e.strerror}", file=sys.stderr)
            return 3
    if api_tls:  # each client's handshake runs in its own greenthread, on first read
        api_socket = api_tls.wrap_socket(api_socket, server_side=True, do_handshake_on_connect=False)
    cfg.CONF([], project="os_ken")  # os-ken's Datapath reads its socket and echo settings here
    log.info("config %s: %d bridges, %d mappings (%d from the store %s); OpenFlow on %s:%d%s; "
             "API on %s://%s:%d%s", config.source, len(config.overlay.bridges), len(state.cache),
             state.cache.sources().get("api", 0), store.name, config.openflow_host, config.openflow_port,
             " (TLS)" if of_tls else "", "https" if api_tls else "http",
             config.api.host, config.api.port, " (token required for changes)" if token else "")
    _warn_open_openflow(config, log)
    labels = {b.datapath_id: b.label for b in config.overlay.bridges if b.datapath_id is not None}
    admission = Admission(labels, config.tls_peers)
    listener = Listener(sockets["OpenFlow"], admission, config.handshake_timeout, config.max_handshakes,
                        of_tls or None)
    manager = AppManager.get_instance()
    # os-ken's handshake without its server (openflow/listener.py), then ours.
    manager.applications_cls.update({Handshake.__module__: Handshake,
                                     LispControllerApp.__module__: LispControllerApp})
    services = manager.instantiate_apps(lisp_config=config, lisp_state=state, lisp_store=store,
                                        lisp_before_sync=args.before_sync, lisp_listener=listener,
                                        lisp_admission=admission, lisp_control_socket=control_socket,
                                        lisp_membership=membership)
    app = manager.applications["LispControllerApp"]
    if membership is not None:
        store.observe_requests(app.metrics.observe_etcd)
        membership.observe_requests(app.metrics.observe_etcd)
    store.follow(app.apply_stored, app.change_lock)  # other controllers' changes (docs/etcd.rst)
    listener.count_into(app.metrics)
    services.append(hub.spawn(listener.serve))
    if store.read_only:
        app.store_error = store.read_only
        log.error("%s: serving the stored state read-only; changes get 503 until it is writable",
                  store.read_only)
    if config.lisp.enabled:  # the Map-Server and Map-Resolver (docs/control-plane.rst)
        from lisp_controller.lisp.service import MappingSystem

        app.mapping_system = MappingSystem(app, config.lisp)
        try:
            app.mapping_system.bind()
        except OSError as e:
            print(f"error: cannot listen on {config.lisp.listen}:{config.lisp.port} for LISP control: "
                  f"{e.strerror}", file=sys.stderr)
            manager.close()
            store.close()
            return 3
        services += app.mapping_system.start()
        log.info("LISP control on %s:%d: Map-Server for %d sites (%s), Map-Resolver", config.lisp.listen,
                 config.lisp.port, len(config.lisp.sites), ", ".join(s.name for s in config.lisp.sites) or "none")
    api = Api(app, token, config.api, pause=lambda: hub.sleep(0))
    services.append(hub.spawn(http.serve, api_socket, api, config.api.client_timeout))
    from lisp_controller.controller import offhub
    from lisp_controller.controller.gcpause import freeze_at_start

    offhub.start()  # its threads now, not in the middle of the first big request
    freeze_at_start()  # the code and the loaded state, out of every full collection's way
    try:
        hub.joinall(services)
    except KeyboardInterrupt:
        pass
    finally:
        if membership is not None:
            membership.close()  # revokes the lease: the others take the bridges over now
        manager.close()
        store.close()
        lock.close()
    return 0


class StoreLocked(LispControllerError):
    """Another controller serves this SQLite store."""


class _NoLock:
    def close(self) -> None:
        pass


def _lock_store(path: str, log):
    """One controller per SQLite store: an exclusive lock on `<store>.lock`, held
    as long as this process runs (the kernel lets go when it ends, even on
    kill -9). Two controllers on one store would each acknowledge writes
    the other never sees. StoreLocked names the holder; a lock file that
    cannot be made (a read-only disk) is logged and the start goes on."""
    import fcntl

    lock_path = f"{path}.lock"
    try:
        lock = open(lock_path, "a+")
    except OSError as e:
        try:
            lock = open(lock_path)  # an existing lock file on a read-only filesystem still locks
        except OSError:
            log.warning("cannot lock the store (%s: %s); a second controller on it would not be noticed",
                        lock_path, e.strerror)
            return _NoLock()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise StoreLocked(f"store {path} is in use by another lisp-controller"
                          + (f" (pid {holder})" if holder.isdigit() else "") + f": {lock_path} is locked") from None
    if lock.writable():
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    return lock


def _warn_open_openflow(config, log) -> None:
    """Without TLS, whoever reaches the OpenFlow port can connect as any
    bridge; with TLS, any switch the CA signed can, unless the bridge's
    `tls_peer` says which certificate is its own."""
    import ipaddress

    if config.tls is None:
        if not ipaddress.ip_address(config.openflow_host).is_loopback:
            log.warning("OpenFlow on %s:%d without TLS: anyone who reaches this port can connect as "
                        "any bridge; set [controller] tls_key, tls_cert and tls_ca (docs/reliability.rst)",
                        config.openflow_host, config.openflow_port)
        return
    unbound = [b.label for b in config.overlay.bridges if b.datapath_id not in config.tls_peers]
    if unbound:
        log.warning("bridges without tls_peer: %s; any switch whose certificate the CA signed can "
                    "connect as them", ", ".join(unbound))


def _merge_store(state, store, mappings, endpoints, log) -> None:
    """The config wins: a stored API mapping or endpoint that now collides
    with the config is removed from the store, with a warning."""
    from lisp_controller.controller.admit import admit, describe_dropped
    from lisp_controller.store import Delta, StoreError

    _warn_refused(mappings, endpoints, log)
    change, drop, eps_drop = admit(state, Delta(put=mappings, put_endpoints=endpoints))
    for line in describe_dropped(drop, eps_drop, state):
        log.warning("stored %s; the config wins and it is removed from the store", line)
    if drop or eps_drop:
        try:
            store.write(delete=[m.key for m in drop], delete_endpoints=[(label, ep.port) for label, ep, _ in eps_drop])
        except StoreError as e:  # they are left out of the state all the same
            log.error("%s; the entries the config now owns stay in the store for now", e)
    state.apply(change, bump=False)


def _warn_refused(mappings, endpoints, log) -> None:
    """Say which stored values this version refuses (README.rst lists
    them): an earlier one accepted them. They are kept, so an upgrade never
    cuts a VM off; the API can fix or delete each of them."""
    from lisp_controller.model import ModelError, parse_rloc_address

    for label, ep in endpoints:
        try:
            ep.check()
        except ModelError as e:
            log.warning("stored endpoint %r on bridge %s: %s; kept, but this version refuses it: "
                        "replace or delete it through the API", ep.port, label, e)
    first: dict = {}
    for m in mappings:
        for r in m.rlocs:
            first.setdefault(r.address, m)
    for address, m in first.items():
        try:
            parse_rloc_address(str(address))
        except ModelError as e:
            log.warning("stored mapping %s:%s (and any other with this RLOC): %s; kept, but this "
                        "version refuses it: replace or delete it through the API", m.iid, m.eid, e)


def main(argv: list[str] | None = None, clock: Callable[[], float] = time.time,
         before_sync: Callable[[str], None] | None = None, lease_guard: bool = True) -> int:
    """`clock` (wall time), `before_sync` (called as each bridge
    sync starts planning) and `lease_guard` False (no check of the etcd lease before a
    write, so the switch alone refuses a stale master) are passed in by
    tests only (lab/serve.py)."""
    parser = argparse.ArgumentParser(prog="lisp-controller",
                                     description="OpenFlow controller that makes OVS bridges LISP tunnel routers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the controller")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--store", help="SQLite store path (overrides store.path in the config; not with etcd)")
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
    from lisp_controller.cli.client import add_parsers

    add_parsers(sub)
    args = parser.parse_args(argv)
    args.clock, args.before_sync, args.lease_guard = clock, before_sync, lease_guard
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

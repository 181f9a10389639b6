"""Who may connect as which bridge, and what the OpenFlow port does with
everyone else: each test runs the real `lisp-controller serve` process
against real OVS, with rogue switches written here on plain sockets
(tests/rogue.py). docs/reliability.rst, "OpenFlow admission", has the
figures.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lab.scenario import ControllerProcess, build, wait_programmed
from lab.processes import wait_until

from .rogue import HEADER, HELLO, Rogue, message
from .test_api import Client
from .test_reliability import BLOG, datapaths, make_cert, mapping, open_fds, ours, use_ssl

HV1, HV2 = "00008ad828ce7949", "00001e2e0e0cf040"
OPEN_WARNING = "without TLS: anyone who reaches this port can connect as any bridge"


def start(testbed, config: Path):
    ov = build(testbed, config)
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    wait_until(lambda: all(d["verified_ms"] is not None for d in datapaths(api).values()),
               timeout=20, what="both bridges synced")
    return ov, ctl, api


def rogue(ov, tls: ssl.SSLContext | None = None) -> Rogue:
    """A rogue switch connecting from the controller's own namespace."""
    with ov.testbed.netns(ov.controller_ns.ns):
        return Rogue.connect(tls=tls)


def conflicts(api) -> list[dict]:
    status, body = api("GET", "/v1/datapaths")
    assert status == 200
    return body["conflicts"]


def confirmed_write(api, eid: str) -> dict[str, str]:
    status, body = api("POST", "/v1/mappings", mapping(eid))
    assert status == 201, body
    return {b["bridge"]: b["status"] for b in body["bridges"]}


def metric(api, name: str, **labels: str) -> float:
    text = api("GET", "/metrics")[1]
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    m = re.search(rf"^{re.escape(want)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_rogue_claiming_a_live_bridge_is_refused_and_the_bridge_keeps_its_session(testbed):
    """A plain TCP client says HELLO and answers FEATURES_REQUEST with
    hv1's datapath ID while hv1 is connected: the controller closes it,
    logs both addresses, lists the conflict, and hv1 keeps its session:
    writes reach it during the attempt and after the rogue has gone."""
    ov, ctl, api = start(testbed, BLOG)
    held = datapaths(api)[HV1]
    intruder = rogue(ov)
    try:
        where = intruder.where
        started = time.monotonic()
        admitted = intruder.handshake(int(HV1, 16))
        assert intruder.wait_closed(5), "the controller kept the rogue connection open"
        assert not admitted  # closed before the port description: never a datapath of the app
        print(f"\nrogue claiming a live bridge's ID: closed {(intruder.closed_at - started) * 1000:.0f} ms "
              "after its HELLO")
    finally:
        intruder.close()
    log = ctl.log()
    assert re.search(rf"datapath {HV1}: connection from {re.escape(where)} claims it, but the session "
                     rf"from {re.escape(held['address'])} holds it and answers: refused", log), log[-3000:]
    now = datapaths(api)[HV1]
    assert now["connected"] and now["address"] == held["address"]
    assert now["connected_since"] == held["connected_since"]
    [conflict] = conflicts(api)
    assert conflict["datapath_id"] == HV1 and conflict["reason"] == "duplicate"
    assert conflict["holder"] == held["address"] and conflict["claimant"] == where and conflict["count"] == 1
    assert confirmed_write(api, "10.5.0.0/16") == {HV1: "confirmed", HV2: "confirmed"}
    assert any("nw_dst=10.5.0.0/16" in f for f in ours(ov.hypervisors[0]))
    assert metric(api, "lisp_openflow_connections_closed_total", reason="duplicate-datapath-id") == 1
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=3, interval=0.05) == (3, 3)
    assert OPEN_WARNING in ctl.log()  # OpenFlow on 172.31.255.1 without TLS
    assert "Traceback" not in ctl.log()


def test_a_displaced_session_that_still_answers_is_adopted_again(testbed):
    """hv1's ovs-vswitchd is frozen (SIGSTOP): its TCP session stays up but
    it answers nothing, so a rogue claiming its ID takes over after one
    unanswered echo. hv1 is thawed; when the rogue leaves, hv1's old
    session, which never dropped, is adopted again and gets writes."""
    ov, ctl, api = start(testbed, BLOG)
    hv1 = ov.hypervisors[0]
    held = datapaths(api)[HV1]
    pid = hv1.vswitchd_pid()
    assert pid is not None and testbed.owns_pid(pid)
    intruder = None
    os.kill(pid, signal.SIGSTOP)
    try:
        intruder = rogue(ov)
        where = intruder.where
        started = time.monotonic()
        assert intruder.handshake(int(HV1, 16)), ctl.log()[-3000:]
        took = time.monotonic() - started
        intruder.serve(int(HV1, 16))
        wait_until(lambda: datapaths(api)[HV1]["address"] == where, timeout=10, what="the rogue holds hv1's ID")
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        wait_until(lambda: hv1.appctl("version"), timeout=10, what="hv1's ovs-vswitchd running again")
    finally:
        intruder.close()
    back = wait_until(lambda: (lambda d: d if d["connected"] and d["address"] == held["address"]
                               and d["verified_ms"] is not None else None)(datapaths(api)[HV1]),
                      timeout=15, what="hv1's own session adopted again")
    print(f"\nrogue admitted {took:.2f} s after claiming a frozen bridge's ID; hv1 adopted again, "
          f"synced in {back['verified_ms']:.0f} ms")
    assert f"the session from {held['address']} did not answer an echo within 2 s; the connection " \
           f"from {where} takes over" in ctl.log()
    assert any(c["reason"] == "displaced" and c["holder"] == held["address"] for c in conflicts(api))
    assert f"the connection from {where} has gone; the session from {held['address']}, displaced before, " \
           "still answers and is adopted again" in ctl.log()
    assert confirmed_write(api, "10.6.0.0/16") == {HV1: "confirmed", HV2: "confirmed"}
    assert any("nw_dst=10.6.0.0/16" in f for f in ours(hv1))
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    assert "Traceback" not in ctl.log()


def test_two_bridges_with_one_datapath_id_the_second_is_refused_and_shown(testbed):
    """hv2's bridge is given hv1's datapath ID: OVS reconnects it with that
    ID, again and again. Each attempt is refused while hv1 answers; the
    conflict is in the log, in GET /v1/datapaths and on the status page;
    hv1 keeps its session. With its own ID back, hv2 is a bridge again."""
    from .browser import Browser

    ov, ctl, api = start(testbed, BLOG)
    hv1, hv2 = ov.hypervisors
    held = datapaths(api)[HV1]
    hv2.vsctl("set", "Bridge", hv2.bridge, f"other-config:datapath-id={HV1}")

    def refused():
        return next((c for c in api("GET", "/v1/datapaths")[1].get("conflicts", [])
                     if c["reason"] == "duplicate" and c["count"] >= 2), None)
    wait_until(lambda: refused() or datapaths(api)[HV1]["address"] != held["address"], timeout=20,
               what="hv2's claims refused twice (or hv2 taking hv1's place)")
    d = datapaths(api)
    assert d[HV1]["address"] == held["address"] and d[HV1]["connected_since"] == held["connected_since"]
    conflict = refused()
    print(f"\nsecond bridge with hv1's ID: refused {conflict['count']} times from {conflict['first']} to "
          f"{conflict['last']}; hv1's session untouched")
    assert conflict["datapath_id"] == HV1 and conflict["holder"] == held["address"]
    assert conflict["claimant"].startswith(f"{hv2.mgmt_address}:")
    assert re.search(rf"datapath {HV1}: connection from {hv2.mgmt_address}:\d+ claims it, but the session "
                     rf"from {re.escape(held['address'])} holds it and answers: refused", ctl.log())
    d = datapaths(api)
    assert d[HV1]["address"] == held["address"] and d[HV1]["connected_since"] == held["connected_since"]
    assert not d[HV2]["connected"]
    assert confirmed_write(api, "10.5.0.0/16") == {HV1: "confirmed", HV2: "not-connected"}
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        b.wait(lambda drv: b.one("#conflicts").is_displayed(), what="the conflicts banner")
        text = b.text("#conflicts")
        assert HV1 in text and hv2.mgmt_address in text and held["address"] in text, text
        assert b.attr(f'#conflicts li[data-dpid="{HV1}"]', "data-reason") == "duplicate"
    hv2.vsctl("set", "Bridge", hv2.bridge, f"other-config:datapath-id={HV2}")
    wait_until(lambda: any("nw_dst=10.5.0.0/16" in f for f in ours(hv2)), timeout=20,
               what="hv2 back under its own ID, with the write it missed")
    assert datapaths(api)[HV1]["connected_since"] == held["connected_since"]
    assert "Traceback" not in ctl.log()


def fingerprint(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().split("=", 1)[1]


def client_tls(pki: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki / "ca-cert.pem")
    ctx.load_cert_chain(pki / f"{name}-cert.pem", pki / f"{name}-key.pem")
    return ctx


def test_a_certificate_speaks_only_for_its_own_bridge(testbed, tmp_path):
    """OpenFlow over TLS, hv1 bound to its certificate's name, hv2 to its
    certificate's fingerprint. Certificates the CA signed, presented by
    rogue clients: hv2's claiming hv1 (while hv1 is away) and another
    certificate named hv2 claiming hv2 are refused; hv1's own certificate
    may be hv1."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_cert(pki, "ca", "ca")
    make_cert(pki, "controller", "ca", "172.31.255.1")
    for name in ("hv1", "hv2"):
        make_cert(pki, name, "ca")
    other = tmp_path / "other"  # a second certificate named hv2, from the same CA
    other.mkdir()
    for f in ("ca-cert.pem", "ca-key.pem"):
        (other / f).write_bytes((pki / f).read_bytes())
    make_cert(other, "hv2", "ca")
    config = tmp_path / "tls.toml"
    text = BLOG.read_text().replace(
        'miss_action = "drop"', 'miss_action = "drop"\ntls_key = "pki/controller-key.pem"\n'
        'tls_cert = "pki/controller-cert.pem"\ntls_ca = "pki/ca-cert.pem"')
    text = text.replace(f'datapath_id = "{HV1}"', f'datapath_id = "{HV1}"\ntls_peer = "hv1"')
    text = text.replace(f'datapath_id = "{HV2}"',
                        f'datapath_id = "{HV2}"\ntls_peer = "sha256:{fingerprint(pki / "hv2-cert.pem")}"')
    config.write_text(text)
    ov = build(testbed, config)
    hv1, hv2 = ov.hypervisors
    for hv in ov.hypervisors:
        use_ssl(hv, pki, hv.name, "ca")
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    wait_until(lambda: all(d["connected"] for d in datapaths(api).values()), timeout=15,
               what="both bridges connected over TLS")
    log = ctl.log()
    assert OPEN_WARNING not in log and "without tls_peer" not in log
    # hv1 goes away (its controller target points elsewhere; it keeps its flows).
    hv1.vsctl("--", "--id=@c", "create", "Controller", 'target="ssl:172.31.255.1:6999"', "max_backoff=1000",
              "--", "set", "Bridge", hv1.bridge, "controller=@c")
    wait_until(lambda: not datapaths(api)[HV1]["connected"], timeout=15, what="hv1 away")

    def attempt(name: str, dpid: str, pki_dir: Path = pki) -> tuple[Rogue, bool]:
        r = rogue(ov, client_tls(pki_dir, name))
        r.started = time.monotonic()
        admitted = r.handshake(int(dpid, 16))
        return r, admitted
    r, admitted = attempt("hv2", HV1)
    try:
        assert not admitted and r.wait_closed(5), "hv2's certificate was accepted as hv1"
        assert r.closed_at - r.started < 1  # closed at once, TLS and all
    finally:
        r.close()
    assert re.search(rf"datapath {HV1}: connection from 172\.31\.255\.1:\d+ refused: certificate 'hv2' "
                     rf"\(sha256:[0-9a-f]{{16}}\.\.\.\) is not bridge {HV1}'s \(tls_peer CN=hv1\)", ctl.log())
    r, admitted = attempt("hv2", HV2, other)
    try:
        assert not admitted and r.wait_closed(5), "a second certificate named hv2 was accepted as hv2"
    finally:
        r.close()
    assert re.search(rf"datapath {HV2}: connection from 172\.31\.255\.1:\d+ refused: certificate 'hv2' "
                     rf"\(sha256:[0-9a-f]{{16}}\.\.\.\) is not bridge {HV2}'s \(tls_peer sha256:", ctl.log())
    reasons = {(c["datapath_id"], c["reason"]) for c in conflicts(api)}
    assert reasons == {(HV1, "certificate"), (HV2, "certificate")}, reasons
    d = datapaths(api)
    assert not d[HV1]["connected"] and d[HV2]["connected"] and d[HV2]["address"].startswith(hv2.mgmt_address)
    # The right certificate may be hv1 (a rogue only in name here).
    r, admitted = attempt("hv1", HV1)
    try:
        assert admitted
        r.serve(int(HV1, 16))
        wait_until(lambda: datapaths(api)[HV1]["connected"], timeout=10,
                   what="hv1's certificate accepted as hv1")
    finally:
        r.close()
    use_ssl(hv1, pki, "hv1", "ca")
    wait_until(lambda: (datapaths(api)[HV1]["address"] or "").startswith(hv1.mgmt_address), timeout=20,
               what="hv1 back")
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    assert "Traceback" not in ctl.log()


def test_a_second_controller_on_the_same_config_stops_with_a_clear_message(testbed, tmp_path):
    """A second `serve` on the same config stops: the store is locked by
    the first; given a store of its own, the OpenFlow port is taken; given
    another OpenFlow port too, the API port is. The first serves on."""
    ov, ctl, api = start(testbed, BLOG)

    def refused(name: str, text: str, config: Path | None = None, store: Path | None = None) -> None:
        proc = ControllerProcess(ov if config is None else dataclasses.replace(ov, config_path=config),
                                 name, store_path=store)
        proc.start()
        started = time.monotonic()
        try:
            code = proc.proc.wait(20)
            print(f"\n{name}: exit {code} after {time.monotonic() - started:.2f} s", end="")
        except subprocess.TimeoutExpired:
            proc.stop()
            raise AssertionError(f"a second controller kept running: {proc.log()[-2000:]}") from None
        assert code == 3 and text in proc.log(), proc.log()
        assert "nothing started" in proc.log() and "Traceback" not in proc.log()

    refused("same", f"store {ctl.store_path} is in use by another lisp-controller (pid {ctl.proc.pid})")
    refused("own-store", "cannot listen on 172.31.255.1:6653 for OpenFlow: Address already in use",
            store=tmp_path / "other.db")
    other_port = tmp_path / "other-port.toml"
    other_port.write_text(BLOG.read_text().replace("port = 6653", "port = 6654"))
    assert "port = 6654" in other_port.read_text()
    refused("own-port", "cannot listen on 127.0.0.1:8080 for the API: Address already in use",
            config=other_port, store=tmp_path / "other2.db")
    assert ctl.proc.poll() is None
    assert confirmed_write(api, "10.5.0.0/16") == {HV1: "confirmed", HV2: "confirmed"}
    # The lock goes with the process, even after kill -9.
    ctl.stop(signal.SIGKILL)
    again = ControllerProcess(ov, "after").start()
    again.wait_log("already correct, nothing sent", count=2)
    assert "in use by another" not in again.log()


def drain_closed(sock: socket.socket) -> bool:
    """Read what the controller sent; True once it has closed the connection."""
    try:
        while True:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            if not sock.recv(65536):
                return True
    except OSError:
        return True


JUNK_CONFIG = """miss_action = "drop"
handshake_timeout = 2
max_handshakes = {cap}"""


def test_junk_on_the_openflow_port_is_closed_and_counted(testbed, tmp_path):
    """Clients that never finish the OpenFlow handshake (silence, random
    bytes, a 3-byte header, a HELLO declaring 65,535 bytes, a HELLO and
    nothing more) are closed after handshake_timeout (default 5 s); a
    flood of them is held to max_handshakes at once, the rest closed at
    accept. Both are counted. The bridges keep working meanwhile."""
    ov, ctl, api = start(testbed, BLOG)
    rng = random.Random(7)
    kinds = {
        "silence": b"",
        "random bytes": bytes(rng.randrange(256) for _ in range(100)),
        "3-byte header": HEADER.pack(4, HELLO, 8, 1)[:3],
        "HELLO declaring 65,535 bytes": HEADER.pack(4, HELLO, 65535, 1) + b"\0" * 100,
        "HELLO and nothing more": message(HELLO, 1),
    }
    socks = {}
    with testbed.netns(ov.controller_ns.ns):
        opened = time.monotonic()
        for kind, data in kinds.items():
            s = socket.create_connection(("172.31.255.1", 6653), timeout=5)
            s.sendall(data)
            socks[kind] = s
    closed_after = {}

    def all_closed():
        for kind, s in socks.items():
            if kind not in closed_after and drain_closed(s):
                closed_after[kind] = time.monotonic() - opened
        return len(closed_after) == len(kinds)
    try:
        wait_until(all_closed, timeout=10, interval=0.05,
                   what=f"every junk client closed ({sorted(set(kinds) - set(closed_after))} still open)")
    finally:
        for s in socks.values():
            s.close()
    for kind, took in closed_after.items():
        assert 4.9 <= took < 5 + 1.0, (kind, took)
    log = ctl.log()
    # One line per host and reason every 10 s: a flood does not flood the log.
    lines = re.findall(r"OpenFlow connection from 172\.31\.255\.1:\d+ closed: no OpenFlow handshake "
                       r"within 5 s \((?:no OpenFlow HELLO|no FEATURES_REPLY)\)", log)
    assert len(lines) == 1, log[-3000:]
    assert metric(api, "lisp_openflow_connections_closed_total", reason="handshake-timeout") == len(kinds)
    # What os-ken cannot parse at all (an OpenFlow version it does not
    # know) is closed at once, in one log line, without a traceback.
    with testbed.netns(ov.controller_ns.ns):
        s = socket.create_connection(("172.31.255.1", 6653), timeout=5)
    try:
        started = time.monotonic()
        s.sendall(HEADER.pack(0x7F, HELLO, 8, 1))
        wait_until(lambda: drain_closed(s), timeout=3, interval=0.02, what="unparsable bytes closed")
        assert time.monotonic() - started < 1
    finally:
        s.close()
    assert re.search(r"OpenFlow connection from 172\.31\.255\.1:\d+ closed: cannot parse what it sent "
                     r"\(OFPUnknownVersion", ctl.log()), ctl.log()[-2000:]
    assert metric(api, "lisp_openflow_connections_closed_total", reason="malformed") == 1

    # A flood against handshake_timeout = 2 and max_handshakes = 40.
    cap = 40
    config = tmp_path / "junk.toml"
    config.write_text(BLOG.read_text().replace('miss_action = "drop"', JUNK_CONFIG.format(cap=cap), 1))
    ctl.stop()
    ctl = ControllerProcess(dataclasses.replace(ov, config_path=config), "flood").start()
    ctl.wait_log("already correct, nothing sent", count=2)
    api.wait_up()
    pid = ctl.proc.pid
    baseline = open_fds(pid)
    # 3-byte headers as fast as one client opens them, for 10 s.
    held, opened_count, peak_fds, over = [], 0, 0, 0
    with testbed.netns(ov.controller_ns.ns):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                s = socket.create_connection(("172.31.255.1", 6653), timeout=5)
                s.sendall(b"\x04\x00\x00")
                held.append(s)
                opened_count += 1
            except OSError:
                over += 1
            still = []
            for s in held:
                if drain_closed(s):
                    s.close()
                else:
                    still.append(s)
            held = still
            if opened_count % 20 == 0:
                peak_fds = max(peak_fds, open_fds(pid))
                # The bridges are served meanwhile.
                if opened_count % 400 == 0:
                    k = opened_count // 400  # a prefix of its own per write, however fast the machine opens
                    assert confirmed_write(api, f"10.{60 + k // 256}.{k % 256}.0/24") == \
                        {HV1: "confirmed", HV2: "confirmed"}
    try:
        wait_until(lambda: all(drain_closed(s) for s in held), timeout=5, what="the flood's last clients closed")
    finally:
        for s in held:
            s.close()
    timeouts = metric(api, "lisp_openflow_connections_closed_total", reason="handshake-timeout")
    limited = metric(api, "lisp_openflow_connections_closed_total", reason="handshake-limit")
    print(f"\njunk: closed after {', '.join(f'{k} {v:.2f} s' for k, v in closed_after.items())}; flood: "
          f"{opened_count} connections in 10 s, controller fds {baseline} -> peak {peak_fds}; closed on "
          f"timeout {timeouts:.0f}, at accept (over {cap} in handshake) {limited:.0f}; client connects "
          f"refused {over}")
    assert opened_count > 1000
    assert peak_fds <= baseline + cap + 10, (baseline, peak_fds)
    assert timeouts >= cap and limited >= opened_count / 2
    assert timeouts + limited >= opened_count
    wait_until(lambda: open_fds(pid) <= baseline + 2, timeout=10, what="fds back to where they were")
    assert metric(api, "lisp_openflow_handshakes_pending") == 0
    assert all(d["connected"] for d in datapaths(api).values())
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=3, interval=0.05) == (3, 3)
    assert "Traceback" not in ctl.log()


NO_PATCH = textwrap.dedent("""
    # Start `serve` after taking a snapshot of every os-ken class and
    # function bound in a module; print which are bound differently once the
    # controller runs.
    import os, sys, warnings
    os.environ["OSKEN_HUB_TYPE"] = "eventlet"
    warnings.filterwarnings("ignore")
    import eventlet
    eventlet.monkey_patch()
    import inspect
    import os_ken.base.app_manager, os_ken.controller.controller, os_ken.controller.ofp_handler, os_ken.lib.hub

    def snapshot():
        return {(name, k): v for name, m in list(sys.modules.items()) if name.startswith("os_ken") and m
                for k, v in list(vars(m).items()) if inspect.isclass(v) or inspect.isfunction(v)}

    before = snapshot()

    def check():
        eventlet.sleep(float(sys.argv[1]))
        after = snapshot()
        changed = sorted(f"{m}.{k}" for (m, k), v in before.items() if after.get((m, k)) is not v)
        print("REPLACED:", " ".join(changed) or "nothing", flush=True)
        os._exit(0)

    eventlet.spawn(check)
    from lisp_controller.__main__ import main
    main(["serve", "-c", sys.argv[2], "--store", sys.argv[3]])
""")


def test_serve_replaces_no_class_or_function_of_os_ken(testbed, tmp_path):
    """With OpenFlow over TLS (where os-ken's server was swapped for ours
    before), no class or function bound in an os-ken module is bound
    differently once the controller runs; the OpenFlow port is ours and
    speaks TLS."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_cert(pki, "ca", "ca")
    make_cert(pki, "controller", "ca", "172.31.255.1")
    make_cert(pki, "hv1", "ca")
    config = tmp_path / "tls.toml"
    config.write_text('[controller]\nlisten = "172.31.255.1"\ntls_key = "pki/controller-key.pem"\n'
                      'tls_cert = "pki/controller-cert.pem"\ntls_ca = "pki/ca-cert.pem"\n\n'
                      f'[[bridge]]\ndatapath_id = "{HV1}"\nrloc = "192.168.1.249"\n')
    ctl_ns = testbed.add_controller()
    script = tmp_path / "no_patch.py"
    script.write_text(NO_PATCH)
    log = tmp_path / "controller.log"
    with open(log, "wb") as out:
        proc = testbed.spawn(ctl_ns.ns, [sys.executable, str(script), "4", str(config), str(tmp_path / "s.db")],
                             env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: "OpenFlow on 172.31.255.1:6653 (TLS)" in log.read_text(), timeout=20,
               what="the controller up")
    def connected():
        try:
            return Rogue.connect(tls=client_tls(pki, "hv1"))
        except OSError:
            return None
    with testbed.netns(ctl_ns.ns):  # a TLS client gets its HELLO: the port is served
        r = wait_until(connected, timeout=10, what="the OpenFlow port served")
    try:
        kind, _, _ = r.receive(5)
        assert kind == HELLO
    finally:
        r.close()
    assert proc.wait(20) == 0
    text = log.read_text()
    assert "REPLACED: nothing" in text, text[-3000:]

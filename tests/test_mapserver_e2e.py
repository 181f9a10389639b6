"""The Map-Server and Map-Resolver in the real controller process: foreign
ETRs register over UDP, our bridges' VMs reach them through real OVS, the
registration times out and leaves every bridge; the lispers.net Map-Register
is accepted; each refusal is counted once and changes nothing; 100,000
hostile datagrams leave a registering xTR served. tshark decodes what the
listener sends.

The foreign xTR is lab/lisp_peer.py (its control plane) plus a third lab
hypervisor whose bridge is programmed statically (its data plane).
"""
from __future__ import annotations

import ipaddress
import os
import random
import re
import sys
import time
from pathlib import Path

from lab.lisp_peer import LispPeer, eid_record
from lab.scenario import ControllerProcess, build, wait_programmed
from lab.processes import wait_until
from lab.seed import static_flows
from lisp_controller.lisp import (Action, AuthKey, EncapsulatedControlMessage, InstanceIdAddress, MapNotify,
                                  decode, encode, verify)
from tests.pcap import udp_frames
from tests.test_api import Client
from tests.test_lisp_codec import _mutations, random_message

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lisp-control"
CONTROLLER = "172.31.255.1"
IID = 1000
BRANCH_KEY = "branch-key-0123456"

ETR_SITE = f"""
[[site]]
name = "branch"
keys = [{{key_id = 1, alg = "sha256", key_env = "BRANCH_KEY"}}]
prefixes = [{{iid = {IID}, eid = "10.2.0.0/16", accept_more_specifics = true}}]
"""

TWO_HYPERVISORS = """
[[bridge]]
datapath_id = "00008ad828ce7949"
rloc = "192.168.1.249"
iid = 1000
gateway = "10.1.1.1"
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:b8:27:75"
  eids = ["10.1.1.20"]

[[bridge]]
datapath_id = "00001e2e0e0cf040"
rloc = "192.168.1.252"
iid = 1000
gateway = "10.1.1.1"
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:1b:ea:d5"
  eids = ["10.1.1.30"]
"""

FIXTURE_SITE = f"""
[[site]]
name = "A"
keys = [{{key_id = 1, key = "fixture-A-key1"}}, {{key_id = 3, key = "fixture-A-key3"}}]
prefixes = [{{iid = {IID}, eid = "10.1.0.0/16", accept_more_specifics = true}},
            {{iid = {IID}, eid = "2001:db8:1::/48"}}]

[[site]]
name = "small"
keys = [{{key_id = 9, alg = "sha1", key = "small-key"}}]
max_registrations = 1
prefixes = [{{iid = {IID}, eid = "10.5.0.0/16"}}, {{iid = {IID}, eid = "10.6.0.0/16"}}]
"""


def start(testbed, tmp_path: Path, body: str, lisp: str = "", hooks: tuple[str, ...] = ()):
    """The controller with a [lisp] listener on its management address
    (``hooks``: lab/serve.py's, e.g. a faster clock)."""
    path = tmp_path / "mapserver.toml"
    path.write_text(f'[controller]\nlisten = "{CONTROLLER}"\n\n[lisp]\nlisten = "{CONTROLLER}"\n{lisp}\n{body}')
    ov = build(testbed, path)
    ctl = ControllerProcess(ov, hooks=hooks).start()
    ctl.wait_log("LISP control on")
    api = Client(ov)
    api.wait_up()
    return ov, ctl, api


def extra_address(ov, last_octet: int) -> str:
    """Another address of the controller's namespace to speak from: each
    test peer is its own source for the per-source limits."""
    address = f"172.31.255.{last_octet}"
    ov.controller_ns.run("ip", "addr", "add", f"{address}/24", "dev", ov.controller_ns.bridge)
    return address


def peer_in(ov, namespace: str, key: AuthKey | None, bind: tuple[str, int]) -> LispPeer:
    with ov.testbed.netns(namespace):
        return LispPeer((CONTROLLER, 4342), key, bind=bind)


def metrics(api) -> dict[str, float]:
    status, text = api("GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def registrations(api, site: str) -> list[dict]:
    status, body = api("GET", f"/v1/sites/{site}")
    assert status == 200, body
    return body["site"]["registrations"]


def tshark_fields(capture, fields: list[str], display_filter: str) -> list[dict[str, str]]:
    rows = capture.decode(fields, display_filter, extra=["-E", "occurrence=a"])
    return [dict(zip(fields, row.split("\t"))) for row in rows]


# ---------------------------------------------------------------- end to end with OVS

def test_a_foreign_site_registers_our_vms_reach_it_and_it_times_out(testbed, tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCH_KEY", BRANCH_KEY)   # the site's key comes from the environment
    ov, ctl, api = start(testbed, tmp_path, ETR_SITE + TWO_HYPERVISORS,
                         hooks=("--time-scale", "60"))
    wait_programmed(ov)
    hv1, hv2 = ov.hypervisors
    vm1, vm2 = ov.vms
    # The foreign site: a third hypervisor our controller does not manage,
    # its bridge programmed by hand, and its ETR's control plane.
    hv3 = testbed.add_hypervisor("hv3", "192.168.1.253", 16, ov.segment, "0000000000000b03")
    vm3 = testbed.add_vm(hv3, "vm3", "52:54:00:00:0b:03", "10.2.1.20/24", port_name="vnet0")
    vm3.run("ip", "route", "add", "default", "via", "10.2.1.1")
    vm3.neigh_add("10.2.1.1", "02:00:00:00:0b:01")
    hv3.add_flows(static_flows(hv3, vm3, vm1, hv1.rloc, IID))
    capture = testbed.capture(ov.controller_ns.ns, ov.controller_ns.bridge, "lisp-control").start()
    etr = peer_in(ov, hv3.ns, AuthKey(1, BRANCH_KEY.encode()), (hv3.mgmt_address, 4342))
    try:
        record = eid_record(IID, "10.2.1.0/24", [(hv3.rloc, 1, 100)], ttl=3)
        notify = etr.register([record])           # verified with our key, or ValueError
        assert isinstance(notify, MapNotify) and notify.records == (record,)
        etr.keep_registering([record], interval=0.5)   # 3 minutes are 3 s at --time-scale 60

        # In the API with the RLOC and TTL the ETR gave, from that xTR.
        wait_until(lambda: registrations(api, "branch"), timeout=10, what="the registration in the API")
        (reg,) = registrations(api, "branch")
        assert (reg["iid"], reg["eid"], reg["ttl"], reg["xtr"]) == (IID, "10.2.1.0/24", 3, f"{hv3.mgmt_address}:4342")
        assert reg["rlocs"] == [{"address": hv3.rloc, "priority": 1, "weight": 100}]
        assert 0 < reg["expires_in"] <= 180 and reg["hidden_by"] is None
        status, body = api("GET", "/v1/mappings?source=registered:branch")
        assert status == 200 and [m["eid"] for m in body["mappings"]] == ["10.2.1.0/24"]

        # Every bridge carries it; our VM pings the foreign one through the tunnel.
        for hv in (hv1, hv2):
            wait_until(lambda: any("nw_dst=10.2.1.0/24" in f and f"set_field:{hv3.rloc}->tun_dst" in f
                                   for f in hv.dump_flows()), timeout=10, what=f"the registered EID on {hv.name}")
        vm1.wait_reachable("10.2.1.20")
        assert vm1.ping("10.2.1.20", count=5) == (5, 5)

        # The foreign xTR asks us as its Map-Resolver.
        reply = etr.request(IID, "10.1.1.30", itr_rloc=hv3.mgmt_address)
        (rec,) = reply.records
        assert (rec.eid, rec.mask_len) == (InstanceIdAddress(IID, ipaddress.ip_address("10.1.1.30")), 32)
        assert [(str(l.address), l.priority, l.weight) for l in rec.locators] == [(hv2.rloc, 1, 100)]
        negative = etr.request(IID, "10.1.2.1", itr_rloc=hv3.mgmt_address).records[0]
        assert (str(negative.eid.address), negative.mask_len, negative.ttl, negative.action, negative.locators) == (
            "10.1.2.0", 23, 15, Action.NATIVELY_FORWARD, ())
        unregistered = etr.request(IID, "10.2.200.1", itr_rloc=hv3.mgmt_address).records[0]
        assert (str(unregistered.eid.address), unregistered.mask_len, unregistered.ttl) == ("10.2.128.0", 17, 1)
        # Its own EID: the site did not ask for proxy replies, so the request
        # is forwarded to the ETR that registered it (here: itself).
        nonce = os.urandom(8)
        etr.send(etr.request_bytes(IID, "10.2.1.20", hv3.mgmt_address, nonce))
        forwarded = etr.wait_for(lambda m: isinstance(m, EncapsulatedControlMessage), timeout=3)
        assert forwarded is not None and forwarded[0].to_etr and forwarded[0].message.nonce == nonce
        assert forwarded[2][0] == CONTROLLER

        # The ETR stops registering: three (scaled) minutes later the mapping
        # has left every bridge and the API.
        etr.stop()
        for hv in (hv1, hv2):
            wait_until(lambda: not any("10.2.1.0/24" in f for f in hv.dump_flows()), timeout=15,
                       what=f"the timed-out registration gone from {hv.name}")
        assert registrations(api, "branch") == []
        assert api("GET", "/v1/mappings?source=registered:branch")[1]["total"] == 0
        assert vm1.ping("10.2.1.20", count=2, interval=0.2)[1] == 0
    finally:
        etr.close()
        capture.stop()

    # What the listener sent, as tshark's lisp dissector reads it.
    sent = tshark_fields(capture, ["lisp.type", "lisp.nonce", "lisp.keyid", "lisp.authlen", "lisp.mapping.ttl",
                                   "lisp.mapping.eid.masklen", "lisp.mapping.act", "lisp.loc.locator",
                                   "lisp.lcaf.iid", "lisp.lcaf.iid.ipv4", "lisp.ecm.res", "_ws.malformed",
                                   "_ws.expert.severity"],
                         f"udp.srcport == 4342 && ip.src == {CONTROLLER} && lisp")
    notifies = [r for r in sent if r["lisp.type"] == "4"]
    assert notifies and notifies[0]["lisp.keyid"] == "0x0102" and notifies[0]["lisp.authlen"] == "32"
    assert notifies[0]["lisp.lcaf.iid.ipv4"] == "10.2.1.0" and notifies[0]["lisp.loc.locator"] == hv3.rloc
    replies = [r for r in sent if r["lisp.type"] == "2"]
    assert [(r["lisp.lcaf.iid.ipv4"], r["lisp.mapping.eid.masklen"], r["lisp.mapping.ttl"], r["lisp.mapping.act"],
             r["lisp.loc.locator"]) for r in replies] == [
        ("10.1.1.30", "32", "1440", "0", hv2.rloc), ("10.1.2.0", "23", "15", "1", ""),
        ("10.2.128.0", "17", "1", "1", "")]
    assert all(r["lisp.lcaf.iid"] == str(IID) for r in replies)
    (ecm,) = [r for r in sent if r["lisp.type"].startswith("8")]
    assert ecm["lisp.type"] == "8,1" and ecm["lisp.ecm.res"] == "0x02000000"   # E: to-ETR
    assert ecm["lisp.nonce"] == "0x" + nonce.hex()
    assert not any(r["_ws.malformed"] for r in sent)
    assert not any(s and int(s) >= 0x00800000 for r in sent for s in r["_ws.expert.severity"].split(","))
    assert "Traceback" not in ctl.log()


# ---------------------------------------------------------------- lispers.net, refusals, fuzz

def test_the_lispers_net_map_register_is_accepted_and_the_notify_verifies(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path, FIXTURE_SITE)
    source = extra_address(ov, 2)
    peer = peer_in(ov, ov.controller_ns.ns, None, (source, 0))
    capture = testbed.capture(ov.controller_ns.ns, "lo", "fixture").start()
    try:
        for name, key in (("map-register-notify-1rloc.pcap", "fixture-A-key1"),
                          ("map-register-notify-2rloc-v4v6-proxy-keyid1.pcap", "fixture-A-key1"),
                          ("map-register-notify-keyid3.pcap", "fixture-A-key3")):
            register = udp_frames(FIXTURES / name)[0].payload
            peer.send(register)
            got = peer.wait_for(lambda m: isinstance(m, MapNotify) and m.nonce == decode(register).nonce, 3)
            assert got is not None, name
            notify, raw, _ = got
            assert verify(raw, key), name
            assert not verify(raw, "fixture-A-key3" if key.endswith("1") else "fixture-A-key1")
            assert (notify.key_id, notify.records) == (decode(register).key_id, decode(register).records)
    finally:
        peer.close()
        capture.stop()
    wait_until(lambda: len(registrations(api, "A")) == 3, timeout=5, what="three registrations")
    by_eid = {r["eid"]: r for r in registrations(api, "A")}
    assert by_eid["10.1.1.0/24"]["rlocs"] == [{"address": "192.168.77.2", "priority": 1, "weight": 100}]
    assert by_eid["10.1.1.0/24"]["ttl"] == 3 and 170 < by_eid["10.1.1.0/24"]["expires_in"] <= 180
    assert by_eid["10.1.1.0/24"]["xtr_id"] == "00000000000000002e25c11ad9822db6"
    assert by_eid["2001:db8:1::/48"]["rlocs"] == [{"address": "192.168.77.3", "priority": 1, "weight": 70},
                                                  {"address": "192.168.77.4", "priority": 2, "weight": 30}]
    assert by_eid["10.1.2.0/24"]["proxy_reply"] and not by_eid["10.1.1.0/24"]["proxy_reply"]
    status, body = api("GET", "/v1/sites")
    assert [(s["name"], s["registered"], s["keys"]) for s in body["sites"]] == [
        ("A", 3, [{"key_id": 1, "alg": "sha256"}, {"key_id": 3, "alg": "sha256"}]),
        ("small", 0, [{"key_id": 9, "alg": "sha1"}])]
    assert "fixture-A-key" not in str(body) and "small-key" not in str(body)
    assert metrics(api)["lisp_map_registers_accepted_total"] == 3
    notifies = tshark_fields(capture, ["lisp.type", "lisp.keyid", "lisp.authlen", "lisp.nonce", "lisp.records",
                                       "lisp.lcaf.iid.ipv6", "_ws.malformed"],
                             f"ip.src == {CONTROLLER} && lisp")
    assert [(n["lisp.type"], n["lisp.keyid"], n["lisp.authlen"], n["lisp.records"]) for n in notifies] == [
        ("4", "0x0102", "32", "1"), ("4", "0x0102", "32", "2"), ("4", "0x0302", "32", "2")]
    assert [n["lisp.nonce"] for n in notifies] == ["0x01dfdfdfddccbbaa", "0x01dfdfdfddccbbaa", "0x02dfdfdfddccbbaa"]
    assert notifies[1]["lisp.lcaf.iid.ipv6"] == "2001:db8:1::" and not any(n["_ws.malformed"] for n in notifies)


def _refused_registers(peer: LispPeer) -> dict[str, bytes]:
    """One Map-Register per refusal reason (site A of FIXTURE_SITE)."""
    key1, small = AuthKey(1, b"fixture-A-key1"), AuthKey(9, b"small-key", 1)
    good = peer.register_bytes([eid_record(IID, "10.1.50.0/24", ["192.0.2.5"])], key=key1)
    lcaf = bytearray(good)
    lcaf[good.index(bytes.fromhex("400300000200")) + 7] += 2    # the IID-LCAF claims 2 more bytes
    return {
        "unknown-key-id": peer.register_bytes([eid_record(IID, "10.1.50.0/24", ["192.0.2.5"])],
                                              key=AuthKey(2, b"fixture-A-key1")),
        "bad-hmac": peer.register_bytes([eid_record(IID, "10.1.50.0/24", ["192.0.2.5"])],
                                        key=AuthKey(1, b"not-the-key")),
        "prefix-outside-site": peer.register_bytes([eid_record(IID, "10.9.0.0/24", ["192.0.2.5"])], key=key1),
        "more-specific-not-allowed": peer.register_bytes([eid_record(IID, "10.5.1.0/24", ["192.0.2.5"])],
                                                         key=small),
        "truncated": good[:-7],
        "bad-lcaf": bytes(lcaf),
        "site-full": peer.register_bytes([eid_record(IID, "10.5.0.0/16", ["192.0.2.5"]),
                                          eid_record(IID, "10.6.0.0/16", ["192.0.2.5"])], key=small),
    }


def test_each_refused_register_is_counted_once_and_changes_nothing(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path, FIXTURE_SITE, lisp="register_rate = 20")
    peer = peer_in(ov, ov.controller_ns.ns, AuthKey(1, b"fixture-A-key1"), (extra_address(ov, 3), 0))
    try:
        assert peer.register([eid_record(IID, "10.1.40.0/24", ["192.0.2.4"])]) is not None
        wait_until(lambda: registrations(api, "A"), timeout=5)
        before = registrations(api, "A")
        counts = metrics(api)
        for reason, data in _refused_registers(peer).items():
            peer.send(data)
            key = f'lisp_map_registers_refused_total{{reason="{reason}"}}'
            wait_until(lambda: metrics(api).get(key) == 1, timeout=5, what=key)
            assert peer.receive(0.2) is None, reason        # nothing is sent back
            now = metrics(api)
            changed = {k: now[k] - counts.get(k, 0) for k in now if k.startswith("lisp_map_registers")
                       and now[k] != counts.get(k, 0)}
            assert changed == {key: 1}, (reason, changed)
            counts = now
            assert [{**r, "expires_in": 0, "last_registered": 0} for r in registrations(api, "A")] == \
                [{**r, "expires_in": 0, "last_registered": 0} for r in before], reason
        assert registrations(api, "small") == []
        # A source sending faster than register_rate is refused beyond its burst; others are not.
        fast = peer_in(ov, ov.controller_ns.ns, AuthKey(1, b"fixture-A-key1"), (extra_address(ov, 4), 0))
        burst = fast.register_bytes([eid_record(IID, "10.1.41.0/24", ["192.0.2.4"])], want_map_notify=False)
        for _ in range(60):
            fast.send(burst)
        key = 'lisp_map_registers_refused_total{reason="rate-limited"}'
        wait_until(lambda: metrics(api).get(key, 0) + metrics(api)["lisp_map_registers_accepted_total"]
                   - counts["lisp_map_registers_accepted_total"] == 60, timeout=5, what="60 registers counted")
        limited = metrics(api)[key]
        assert 35 <= limited <= 40, limited
        assert peer.register([eid_record(IID, "10.1.40.0/24", ["192.0.2.4"])]) is not None
        fast.close()
    finally:
        peer.close()
    log = ctl.log()
    assert len(re.findall(r"from 172\.31\.255\.4:\d+: MapRegister refused: rate-limited", log)) == 1
    assert "fixture-A-key1" not in log and "Traceback" not in log


def test_a_hundred_thousand_hostile_datagrams_leave_a_registering_xtr_served(testbed, tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCH_KEY", BRANCH_KEY)
    ov, ctl, api = start(testbed, tmp_path, FIXTURE_SITE + ETR_SITE,
                         lisp="register_rate = 1000000\nrequest_rate = 1000000")
    etr = peer_in(ov, ov.controller_ns.ns, AuthKey(1, BRANCH_KEY.encode()), (extra_address(ov, 5), 0))
    fuzzer = peer_in(ov, ov.controller_ns.ns, None, (extra_address(ov, 6), 0))
    rng = random.Random(4342)
    seeds = [f.payload for f in udp_frames(FIXTURES / "all-control.pcap")]
    seeds += [encode(random_message(rng)) for _ in range(50)]
    seeds += [etr.register_bytes([eid_record(IID, f"10.2.{n}.0/24", ["192.0.2.7"])]) for n in range(10)]
    seeds += list(_refused_registers(fuzzer).values())
    record = eid_record(IID, "10.2.77.0/24", ["192.0.2.77"], ttl=5)
    assert etr.register([record], proxy_reply=True) is not None   # we answer for it
    wait_until(lambda: registrations(api, "branch"), timeout=5, what="the xTR's registration")
    notified = answered = rounds = sent = 0
    started = time.monotonic()
    try:
        while sent < 100_000:
            for _ in range(200):   # a batch the socket's receive buffer holds
                if rng.random() < 0.3:
                    fuzzer.send(rng.randbytes(rng.randrange(0, 200)))
                else:
                    fuzzer.send(next(_mutations(rng, rng.choice(seeds), 1)))
                sent += 1
            # Meanwhile the valid xTR registers and asks, and is answered. Its
            # datagrams queue behind the batch on the listener's socket, so
            # their answers also mean the batch has been handled.
            rounds += 1
            notified += etr.register([record], timeout=5, proxy_reply=True) is not None
            reply = etr.request(IID, "10.2.77.1", itr_rloc=etr.address[0], timeout=5)
            answered += reply is not None and [str(l.address) for l in reply.records[0].locators] == ["192.0.2.77"]
    finally:
        etr.close()
        fuzzer.close()
    seconds = time.monotonic() - started
    assert ctl.proc.poll() is None
    assert notified == rounds and answered == rounds, (notified, answered, rounds)
    regs = {r["eid"]: r for r in registrations(api, "branch")}
    assert "10.2.77.0/24" in regs and regs["10.2.77.0/24"]["rlocs"][0]["address"] == "192.0.2.77"
    m = metrics(api)
    assert m["lisp_control_datagrams_total"] >= sent + 2 * rounds   # none lost on the way: all were handled
    assert m.get('lisp_control_dropped_total{reason="handler-error"}', 0) == 0
    print(f"fuzz: {sent} datagrams in {seconds:.1f} s, {rounds} registers and requests all answered")
    assert "Traceback" not in ctl.log()


# ---------------------------------------------------------------- the status page and the CLI

def test_sites_and_registrations_on_the_status_page_and_in_the_cli(testbed, tmp_path):
    from tests.browser import Browser

    ov, ctl, api = start(testbed, tmp_path, FIXTURE_SITE)
    etr = peer_in(ov, ov.controller_ns.ns, AuthKey(1, b"fixture-A-key1"), (extra_address(ov, 7), 0))
    try:
        with Browser(testbed, ov.controller_ns.ns) as b:
            b.open()
            b.wait(lambda d: b.css('#sites [data-site="A"]'), what="site A's card")
            assert "Nothing registered" in b.text('#sites [data-site="A"]')
            assert "key-id 1 (sha256), key-id 3 (sha256)" in b.text('#sites [data-site="A"]')
            assert "fixture-A-key" not in b.js("return document.body.innerHTML")
            record = eid_record(IID, "10.1.60.0/24", [("192.0.2.60", 1, 70), ("192.0.2.61", 2, 30)], ttl=5)
            assert etr.register([record], proxy_reply=True) is not None
            selector = '#sites [data-site="A"] tr[data-eid="10.1.60.0/24"]'
            b.wait(lambda d: b.css(selector), what="the registration's row")
            text = b.text(selector)
            assert "192.0.2.60" in text and "1/70" in text and "2/30" in text and "proxy reply" in text
            assert f"{etr.address[0]}:{etr.address[1]}" in text and "min" in text   # expires in 4 min ...
            assert "1 of 10,000" in b.text('#sites [data-site="A"] .badge').lower()   # shown in capitals
            # Withdrawn (TTL 0): the row goes, without a reload.
            assert etr.register([eid_record(IID, "10.1.60.0/24", ["192.0.2.60"], ttl=0)]) is not None
            b.wait(lambda d: not b.css(selector), what="the withdrawn registration gone")
            assert etr.register([record]) is not None
            b.wait(lambda d: b.css(selector), what="registered again")
    finally:
        etr.close()
    env = dict(os.environ, LISP_CONTROLLER_URL="http://127.0.0.1:8080")
    listing = testbed.run(ov.controller_ns.ns, sys.executable, "-m", "lisp_controller", "site", "list", env=env).stdout
    assert re.search(r"^A\s+1000:10\.1\.0\.0/16\+, 1000:2001:db8:1::/48\s+1/sha256, 3/sha256\s+no\s+1/10000$",
                     listing, re.M), listing
    assert re.search(r"^small\s.*\s0/1$", listing, re.M), listing
    shown = testbed.run(ov.controller_ns.ns, sys.executable, "-m", "lisp_controller", "site", "show", "A",
                        env=env).stdout
    assert "1000  10.1.60.0/24  192.0.2.60 (1/70), 192.0.2.61 (2/30)" in shown, shown
    missing = testbed.run(ov.controller_ns.ns, sys.executable, "-m", "lisp_controller", "site", "show", "nope",
                          env=env, check=False)
    assert missing.returncode == 1 and "404 site: no site 'nope' in the config" in missing.stderr
    status, body = api("GET", "/v1/mappings?source=registered:nope")
    assert status == 400 and body["error"]["field"] == "source"

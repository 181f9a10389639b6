"""Fast tests of the admission rules and their config keys, with stand-in
connections (the real thing, against OVS and rogue switches, is in
tests/test_admission.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lisp_controller.config import ConfigError, load_config, parse_config
from lisp_controller.openflow.admission import Admission, LogLimiter, identity_problem
from lisp_controller.openflow.tls import PeerIdentity, TlsPeer, parse_tls_peer

ROOT = Path(__file__).resolve().parent.parent
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"
HV1, HV2 = 0x00008AD828CE7949, 0x00001E2E0E0CF040
FP = "ab" * 32


class Conn:
    """Stands in for a listener connection: answers echoes or not."""

    def __init__(self, where: str, answers: bool = True, peer: PeerIdentity | None = None):
        self.where, self.answers, self.peer = where, answers, peer
        self.datapath_id = None
        self.closed = False
        self.reason = None
        self.probes = 0

    def probe(self, timeout: float) -> bool:
        self.probes += 1
        return self.answers and not self.closed

    def close(self, reason=None) -> None:
        self.closed, self.reason = True, reason


def test_a_claim_on_a_live_id_is_refused_and_recorded_once_per_host():
    adm = Admission({HV1: "hv1"}, {})
    holder = Conn("10.0.0.1:1000")
    assert adm.claim(holder, HV1) is None and holder.datapath_id == HV1
    for port in (2000, 2001, 2002):  # one switch retrying: one conflict, counted
        assert adm.claim(Conn(f"10.0.0.2:{port}"), HV1) == "duplicate-datapath-id"
    [c] = adm.conflicts()
    assert (c["datapath_id"], c["bridge"], c["reason"], c["holder"], c["claimant"], c["count"]) == \
        ("00008ad828ce7949", "hv1", "duplicate", "10.0.0.1:1000", "10.0.0.2:2002", 3)
    assert "claims it, but the session from 10.0.0.1:1000 holds it and answers: refused" in c["message"]
    assert adm.claim(Conn("10.0.0.3:1"), HV2) is None  # another ID is another matter


def test_a_silent_holder_is_displaced_and_adopted_again_if_it_answers_later():
    adm = Admission({}, {})
    old = Conn("10.0.0.1:1000", answers=False)
    assert adm.claim(old, HV1) is None
    new = Conn("10.0.0.2:2000")
    assert adm.claim(new, HV1) is None and not old.closed
    assert [c["reason"] for c in adm.conflicts()] == ["displaced"]
    old.answers = True  # it was only slow
    assert adm.gone(new) is old
    assert adm.claim(Conn("10.0.0.3:3000"), HV1) == "duplicate-datapath-id"  # old holds it again


def test_displaced_sessions_that_stay_silent_are_closed_when_they_would_be_adopted():
    adm = Admission({}, {})
    first, second, third = Conn("a:1", answers=False), Conn("b:1", answers=False), Conn("c:1")
    for conn in (first, second, third):
        assert adm.claim(conn, HV1) is None
    assert adm.gone(third) is None
    assert first.closed and second.closed and first.reason == "displaced-dead"
    assert adm.gone(first) is None and adm.gone(second) is None
    assert adm.claim(Conn("d:1"), HV1) is None  # nobody holds it any more


def test_a_holder_that_closed_meanwhile_is_replaced_without_a_conflict():
    adm = Admission({}, {})
    old = Conn("a:1")
    adm.claim(old, HV1)
    old.closed = True  # its end is on the way (a reconnect raced it)
    assert adm.claim(Conn("a:2"), HV1) is None
    assert adm.conflicts() == []
    assert adm.gone(old) is None


def test_the_end_of_a_connection_that_held_nothing_changes_nothing():
    adm = Admission({}, {})
    assert adm.gone(Conn("a:1")) is None
    holder = Conn("a:2")
    adm.claim(holder, HV1)
    refused = Conn("b:1")
    assert adm.claim(refused, HV1) is not None
    assert adm.gone(refused) is None
    assert adm.claim(Conn("c:1"), HV1) == "duplicate-datapath-id"


def peer(cn: str, fp: str = FP) -> PeerIdentity:
    return PeerIdentity(cn, fp)


def test_certificates_are_bound_to_their_bridges():
    peers = {HV1: TlsPeer("cn", "hv1"), HV2: TlsPeer("sha256", FP)}
    labels = {HV1: "hv1", HV2: "hv2"}
    assert identity_problem(HV1, peer("hv1", "cd" * 32), peers, labels) is None
    assert identity_problem(HV2, peer("whatever"), peers, labels) is None
    assert "is not bridge hv1's (tls_peer CN=hv1)" in identity_problem(HV1, peer("hv2", "cd" * 32), peers, labels)
    assert "(tls_peer sha256:" in identity_problem(HV2, peer("hv2", "cd" * 32), peers, labels)
    # An unbound ID: any certificate, except one bound to other bridges.
    assert identity_problem(0x99, peer("hv9", "cd" * 32), peers, labels) is None
    assert identity_problem(0x99, peer("hv1", "cd" * 32), peers, labels) == \
        "certificate 'hv1' (sha256:cdcdcdcdcdcdcdcd...) belongs to bridge hv1"
    assert identity_problem(0x99, None, {}, labels) is None  # no TLS
    adm = Admission(labels, peers)
    assert adm.claim(Conn("a:1", peer=peer("hv2", "cd" * 32)), HV1) == "certificate"
    assert [c["reason"] for c in adm.conflicts()] == ["certificate"]


def test_tls_peer_forms():
    fp = ":".join(["AB"] * 32)  # as openssl prints it
    assert parse_tls_peer(f"sha256:{fp}") == TlsPeer("sha256", FP)
    assert parse_tls_peer(f"SHA256:{FP.upper()}") == TlsPeer("sha256", FP)
    assert parse_tls_peer("hv1.example") == TlsPeer("cn", "hv1.example")
    for bad in ("sha256:abc", "sha256:" + "zz" * 32, "", "  ", 5):
        with pytest.raises(ValueError):
            parse_tls_peer(bad)


def test_log_limiter_says_how_many_lines_it_held_back():
    now = [0.0]
    quiet = LogLimiter(10, clock=lambda: now[0])
    assert quiet.allow("a") == 0
    assert quiet.allow("a") is None and quiet.allow("a") is None
    assert quiet.allow("b") == 0
    now[0] = 10.5
    assert quiet.allow("a") == 2


def _tls_config(tmp_path: Path, bridge_extra: str, tls: bool = True) -> Path:
    for name in ("key.pem", "cert.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    text = BLOG.read_text()
    if tls:
        text = text.replace('miss_action = "drop"', 'miss_action = "drop"\ntls_key = "key.pem"\n'
                            'tls_cert = "cert.pem"\ntls_ca = "ca.pem"')
    text = text.replace('datapath_id = "00008ad828ce7949"', 'datapath_id = "00008ad828ce7949"\n' + bridge_extra)
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_config_tls_peer_is_kept_per_datapath_id(tmp_path):
    config = load_config(_tls_config(tmp_path, f'tls_peer = "sha256:{FP}"'))
    assert config.tls_peers == {HV1: TlsPeer("sha256", FP)}
    assert (config.handshake_timeout, config.max_handshakes) == (5.0, 256)


def test_config_tls_peer_problems(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_tls_config(tmp_path, 'tls_peer = "hv1"', tls=False))
    assert err.value.problems == [f"{tmp_path / 'c.toml'}: bridge[0].tls_peer: needs OpenFlow over TLS "
                                  "([controller] tls_key, tls_cert, tls_ca)"]
    with pytest.raises(ConfigError) as err:
        load_config(_tls_config(tmp_path, 'tls_peer = "sha256:12"'))
    assert "bridge[0].tls_peer: 'sha256:12': a SHA-256 fingerprint is 64 hex digits" in err.value.problems[0]
    data = {"controller": {"tls_key": "x", "tls_cert": "x", "tls_ca": "x"},
            "bridge": [{"name": "br2", "rloc": "192.168.1.1", "tls_peer": "hv1"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any("bridge[0].tls_peer: needs the bridge's datapath_id" in p for p in err.value.problems), err.value


@pytest.mark.parametrize("ctl,api,clash", [
    ({}, {"port": 6653}, True),  # 0.0.0.0 (default) covers 127.0.0.1
    ({"listen": "127.0.0.1"}, {"port": 6653}, True),
    ({"listen": "127.0.0.1"}, {"port": 6653, "listen": "127.0.0.2"}, False),
    ({"listen": "::"}, {"port": 6653}, True),  # dual stack
    ({"listen": "10.0.0.1", "port": 8080}, {}, False),
    ({"listen": "0.0.0.0", "port": 8080}, {}, True),
    ({}, {"port": 6654}, False),
])
def test_the_api_and_openflow_cannot_share_a_port(ctl, api, clash):
    data = {"controller": ctl, "api": api, "bridge": [{"datapath_id": "01", "rloc": "192.168.1.1"}]}
    if not clash:
        parse_config(data)
        return
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    [problem] = err.value.problems
    assert "api.port:" in problem and "is also the OpenFlow port" in problem


def test_handshake_settings_are_checked():
    base = {"bridge": [{"datapath_id": "01", "rloc": "192.168.1.1"}]}
    config = parse_config({**base, "controller": {"handshake_timeout": 2, "max_handshakes": 40}})
    assert (config.handshake_timeout, config.max_handshakes) == (2.0, 40)
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "controller": {"handshake_timeout": 0.1}})
    assert "controller.handshake_timeout: must be seconds between 1 and 600" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "controller": {"max_handshakes": 0}})
    assert "controller.max_handshakes: must be between 1 and 65535" in err.value.problems[0]


def test_check_config_refuses_the_api_on_the_openflow_port(tmp_path):
    path = tmp_path / "same-port.toml"
    path.write_text(BLOG.read_text() + '\n[api]\nlisten = "172.31.255.1"\nport = 6653\n')
    r = subprocess.run([sys.executable, "-m", "lisp_controller", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r
    assert "api.port: 6653 is also the OpenFlow port ([controller] port) on 172.31.255.1" in r.stderr

import subprocess
import sys
from pathlib import Path

import pytest

from lisp_controller.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.overlay.bridges


def test_blog_config_describes_the_two_hypervisors():
    config = load_config(ROOT / "configs" / "blog-two-hypervisors.toml")
    hv1, hv2 = config.overlay.bridges
    assert (hv1.datapath_id, str(hv1.rloc)) == (0x00008AD828CE7949, "192.168.1.249")
    assert (hv2.datapath_id, str(hv2.rloc)) == (0x00001E2E0E0CF040, "192.168.1.252")
    assert [str(a) for a in hv1.endpoints[0].eids] == ["10.1.1.20"]
    assert hv1.profile == "lisp-gpe" and hv1.tunnel_port == "lisp0"
    assert (config.openflow_host, config.openflow_port) == ("172.31.255.1", 6653)


BAD = """
[controller]
port = 70000
colour = "blue"

[[bridge]]
name = "br2"
rloc = "192.168.1.300"
tunnel_profile = "vxlan"

[[bridge]]
name = "br2"
rloc = "192.168.1.2"
iid = 5
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00"
  eids = ["10.1.1.20"]

[[mapping]]
iid = 5
eid = "10.1.1.0/33"
"""


def test_bad_config_lists_every_problem_with_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    text = "\n".join(problems)
    for key in ("controller.port", "controller.colour", "bridge[0].rloc", "bridge[0].tunnel_profile",
                "bridge[1].endpoint[0].mac", "mapping[0].eid"):
        assert key in text, key
    assert len(problems) == 6, text


def test_duplicates_are_rejected(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text("""
[[bridge]]
name = "br2"
rloc = "192.0.2.1"
iid = 1
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:00:00:01"
  eids = ["10.0.0.1"]
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:00:00:02"
  eids = ["10.0.0.2"]
[[bridge]]
name = "br2"
rloc = "192.0.2.1"
iid = 1
  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:00:00:03"
  eids = ["10.0.0.1"]
[[mapping]]
iid = 1
eid = "10.9.0.0/16"
[[mapping]]
iid = 1
eid = "10.9.0.0/16"
""")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(err.value.problems)
    assert "already has an endpoint on this bridge" in text
    assert "name 'br2' is used by two bridges" in text
    assert "rloc 192.0.2.1 is also the RLOC" in text
    assert "EID 10.0.0.1 in IID 1 is also on" in text
    assert "is already mapped by mapping[0]" in text


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lisp_controller", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_cli_bad_config_exits_nonzero_before_listening(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    for cmd in (["check-config", str(path)], ["serve", "-c", str(path)]):
        r = _cli(*cmd)
        assert r.returncode == 2, r
        lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
        assert len(lines) == 6, r.stderr
        assert "Traceback" not in r.stderr


def test_cli_unreadable_and_malformed_files(tmp_path):
    r = _cli("check-config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    bad = tmp_path / "syntax.toml"
    bad.write_text("[bridge\n")
    r = _cli("check-config", str(bad))
    assert r.returncode == 2 and "TOML syntax" in r.stderr and "Traceback" not in r.stderr


def test_cli_check_config_and_flows_on_the_blog_config():
    cfg = str(ROOT / "configs" / "blog-two-hypervisors.toml")
    r = _cli("check-config", cfg)
    assert r.returncode == 0 and "2 bridges" in r.stdout
    r = _cli("flows", "-c", cfg, "--bridge", "00008ad828ce7949", "--port", "vnet0=1", "--port", "lisp0=2")
    assert r.returncode == 0, r.stderr
    assert "set_field:192.168.1.252->tun_dst,set_field:0x3e8->tun_id,goto_table:2" in r.stdout


def test_a_bridge_answers_to_its_label_name_and_datapath_id_in_any_usual_form():
    config = load_config(ROOT / "configs" / "blog-two-hypervisors.toml")
    hv1 = config.overlay.bridges[0]
    for ref in ("00008ad828ce7949", "0x8ad828ce7949", "8AD828CE7949", "00:00:8a:d8:28:ce:79:49"):
        assert hv1.answers_to(ref), ref
    assert not hv1.answers_to("00001e2e0e0cf040")
    assert not hv1.answers_to("br9") and not hv1.answers_to("")
    r = _cli("flows", "-c", str(ROOT / "configs" / "blog-two-hypervisors.toml"), "--bridge", "0x8ad828ce7949",
             "--port", "vnet0=1", "--port", "lisp0=2")
    assert r.returncode == 0 and "set_field:192.168.1.252->tun_dst" in r.stdout, r.stderr


def test_a_config_without_a_bridge_is_refused(tmp_path):
    """An empty (or truncated) file would otherwise serve nothing, on every
    interface, with the default store."""
    for text in ("", "[controller]\nlisten = \"127.0.0.1\"\n", "[[mapping]]\niid = 1\neid = \"10.0.0.0/8\"\n"):
        path = tmp_path / "empty.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.problems == [f"{path}: bridge: no [[bridge]] given; the controller needs at least one "
                                      "bridge to manage"]
        for cmd in (["check-config", str(path)], ["serve", "-c", str(path), "--store", str(tmp_path / "s.db")]):
            r = _cli(*cmd)
            assert r.returncode == 2, r
            assert [l for l in r.stderr.splitlines() if l.startswith("error: ")] == [
                f"error: {err.value.problems[0]}"], r.stderr
    assert not (tmp_path / "s.db").exists()


REFUSED = """
[[bridge]]
name = "br/2"
rloc = "0.0.0.0"
tunnel_port = "lisp-tunnel-port0"
iid = 5
router_mac = "01:00:5e:00:00:01"
  [[bridge.endpoint]]
  port = "a/b"
  mac = "52:54:00:00:00:01"
  eids = ["10.1.1.1"]
  [[bridge.endpoint]]
  port = "vnet1"
  mac = "ff:ff:ff:ff:ff:ff"
  eids = ["10.1.1.2"]
  [[bridge.endpoint]]
  port = "vnet2"
  mac = "52:54:00:00:00:02"
  eids = ["0.0.0.0"]
  [[bridge.endpoint]]
  port = "vnet3"
  mac = "52:54:00:00:00:03"
  eids = ["10.1.1.3"]
  gateway = "255.255.255.255"

[[bridge]]
datapath_id = "0000000000000002"
rloc = "fe80::1%eth0"

[[bridge]]
datapath_id = "0000000000000003"
rloc = "::ffff:192.0.2.3"

[[mapping]]
iid = 5
eid = "10.0.0.0/08"

[[mapping]]
iid = 5
eid = "10.3.0.0/16"
rlocs = ["224.0.0.1", {address = "127.0.0.1"}]
"""


def test_values_a_router_would_refuse_are_refused_one_line_each(tmp_path):
    path = tmp_path / "refused.toml"
    path.write_text(REFUSED)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = [p.removeprefix(f"{path}: ") for p in err.value.problems]
    expected = [
        ("bridge[0].name:", "contains '/'"),
        ("bridge[0].rloc:", "the unspecified address; an RLOC must be a unicast address"),
        ("bridge[0].tunnel_port:", "is 17 bytes; an interface name has at most 15"),
        ("bridge[0].router_mac:", "a multicast address"),
        ("bridge[0].endpoint[0].port:", "contains '/'"),
        ("bridge[0].endpoint[1].mac:", "the broadcast address"),
        ("bridge[0].endpoint[2].eids[0]:", "the unspecified address, not a host's address"),
        ("bridge[0].endpoint[3].gateway:", "the broadcast address, not a host's address"),
        ("bridge[1].rloc:", "scoped"),
        ("bridge[2].rloc:", "IPv4-mapped: write 192.0.2.3"),
        ("mapping[0].eid:", "the prefix length has a leading zero"),
        ("mapping[1].rlocs[0]:", "a multicast address"),  # the first problem of a mapping
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for (field, words), line in zip(expected, problems):
        assert line.startswith(field) and words in line, (field, words, line)

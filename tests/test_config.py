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

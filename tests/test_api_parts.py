"""The API's pure parts, without a controller: the error table, HTTP
framing rules, the guard's host names and the metrics' text."""
from __future__ import annotations

import email.parser
import random
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lisp_controller.api.guard import _loopback_name, exposure_problem
from lisp_controller.api.metrics import Metrics
from lisp_controller.api.answers import ERROR_STATUS, BadFraming, KeyInProgress, status_of
from lisp_controller.api.server import framing_problem
from lisp_controller.config import ConfigError
from lisp_controller.errors import Conflict, LispControllerError, NotFound
from lisp_controller.model import ModelError
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.tls import TlsError
from lisp_controller.store.sqlite import StoreError


def test_every_error_is_a_lisp_controller_error_and_its_status_comes_from_one_table():
    for kind in (ModelError, Conflict, NotFound, StoreError, ConfigError, SwitchError, TlsError):
        assert issubclass(kind, LispControllerError), kind
    assert all(issubclass(kind, LispControllerError) for kind, _ in ERROR_STATUS)
    assert status_of(ModelError("mapping.eid", "bad")) == 400
    assert status_of(NotFound("eid", "no mapping")) == 404
    assert status_of(Conflict("eid", "exists")) == 409
    assert status_of(KeyInProgress("Idempotency-Key", "busy")) == 409
    assert status_of(BadFraming("malformed chunk")) == 400
    assert status_of(StoreError("store x: cannot write: the disk is full")) == 503
    assert status_of(SwitchError("bridge x: gone")) == 500  # never meant for a client
    assert status_of(ValueError("a bug")) == 500
    e = ModelError("mappings[3].eid", "is not a valid prefix")
    assert (e.field, e.message, e.problem, str(e)) == \
        ("mappings[3].eid", "is not a valid prefix", "is not a valid prefix", "mappings[3].eid: is not a valid prefix")
    assert str(ModelError(None, "a JSON body is required")) == "a JSON body is required"


def headers(text: str):
    return email.parser.Parser().parsestr(text + "\n")


@pytest.mark.parametrize("head, expected", [
    ("Content-Length: 5\n", None),
    ("Content-Length: 5\nContent-Length: 5\n", None),  # the same value twice: allowed (RFC 9112 6.3)
    ("Transfer-Encoding: chunked\n", None),
    ("Content-Length: 5\nContent-Length: 7\n", (400, "different Content-Length headers (5, 7)")),
    ("Content-Length: 5, 7\n", (400, "different Content-Length headers (5, 7)")),
    ("Content-Length: +5\n", (400, "is not a number of bytes")),
    ("Content-Length: 0x5\n", (400, "is not a number of bytes")),
    ("Content-Length: 5\nTransfer-Encoding: chunked\n", (400, "Content-Length and Transfer-Encoding together")),
    ("Transfer-Encoding: chunked, gzip\n", (400, "chunked must come last")),
    ("Transfer-Encoding: gzip, chunked\n", (501, "not supported")),
    ("Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n", (501, "not supported")),
])
def test_framing_rules(head, expected):
    got = framing_problem(headers(head))
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[0] == expected[0] and expected[1] in got[1], got


def test_loopback_names_and_exposure():
    for host in ("127.0.0.1:8080", "127.0.0.1", "[::1]:8080", "localhost:8080", "LOCALHOST", "a.localhost:1",
                 "127.3.4.5:80"):
        assert _loopback_name(host), host
    for host in ("evil.example:8080", "10.0.0.1:8080", "[2001:db8::1]:8080", "::1", "localhost.evil.example",
                 "127.0.0.1.nip.io:8080", ""):
        assert not _loopback_name(host), host
    assert exposure_problem("127.0.0.1", None) is None
    assert exposure_problem("::1", None) is None
    assert exposure_problem("0.0.0.0", "x" * 16) is None
    assert "beyond loopback, and has no token" in exposure_problem("0.0.0.0", None)


class FakeController:
    """What the metrics collector reads: the state and the bridges' views."""

    def __init__(self, mappings: int, desired: int):
        sources = {"api": mappings} if mappings else {}
        self.state = SimpleNamespace(cache=SimpleNamespace(sources=lambda: dict(sources)),
                                     bridges={"hv1": None, "hv2": None})
        self.desired = desired

    def datapaths(self) -> list[dict]:
        return [{"bridge": "hv1", "configured": True, "connected": True, "flows_desired": self.desired,
                 "flows_installed": self.desired - 1, "flows_rejected": 1, "flows_repaired": 3},
                {"bridge": "hv2", "configured": True, "connected": False, "flows_desired": None,
                 "flows_installed": None, "flows_rejected": 0, "flows_repaired": 0},
                {"bridge": "00000000000000aa", "configured": False, "connected": True, "flows_desired": None,
                 "flows_installed": None, "flows_rejected": 0, "flows_repaired": 0}]


def test_metrics_are_exact_integers_per_controller_with_histograms_and_bridge_series():
    big = 2**70 + 1  # no float holds it
    m = Metrics(FakeController(mappings=1_000_000, desired=big))
    other = Metrics(FakeController(mappings=0, desired=0))
    m.inc("lisp_flow_mods_sent_total", 1_000_000)
    m.inc("lisp_flow_mods_sent_total", 2)
    m.observe_sync("hv1", 0.02)
    m.observe_sync("hv1", 3.0)
    m.observe_barrier_wait(0.004)
    m.observe_api("POST", 201, 0.03)
    for outcome in ("answered", "answered", "negative"):   # counted per datagram, added when scraped
        m.inc("lisp_map_requests_total", outcome=outcome)
    assert 'lisp_map_requests_total{outcome="answered"} 2' in m.render().splitlines()
    m.inc("lisp_map_requests_total", outcome="answered")
    m.inc("lisp_control_datagrams_total")
    text = m.render()
    lines = set(text.splitlines())
    assert 'lisp_map_requests_total{outcome="answered"} 3' in lines
    assert 'lisp_map_requests_total{outcome="negative"} 1' in lines and "lisp_control_datagrams_total 1" in lines
    assert "lisp_flow_mods_sent_total 1000002" in lines
    assert 'lisp_mappings{source="api"} 1000000' in lines
    assert 'lisp_mappings{source="config"} 0' in lines
    assert f'lisp_datapath_flows_desired{{bridge="hv1"}} {big}' in lines
    assert 'lisp_datapath_connected{bridge="hv1"} 1' in lines
    assert 'lisp_datapath_connected{bridge="hv2"} 0' in lines
    assert not any("00000000000000aa" in line for line in lines)  # not configured: not a bridge of ours
    assert 'lisp_datapath_flows_rejected{bridge="hv1"} 1' in lines
    assert 'lisp_datapath_flows_repaired_total{bridge="hv1"} 3' in lines
    assert "lisp_datapaths_connected 1" in lines and "lisp_datapaths_configured 2" in lines
    assert "lisp_reconciles_total 2" in lines and "lisp_reconcile_seconds_total 3.02" in lines
    assert 'lisp_sync_duration_seconds_bucket{bridge="hv1",le="0.025"} 1' in lines
    assert 'lisp_sync_duration_seconds_count{bridge="hv1"} 2' in lines
    assert "lisp_barrier_wait_seconds_count 1" in lines
    assert 'lisp_api_requests_total{method="POST",status="201"} 1' in lines
    assert 'lisp_api_request_duration_seconds_count{method="POST"} 1' in lines
    assert "e+" not in text and "_created" not in text
    # Each controller has its own registry: nothing of m shows in other.
    assert "lisp_flow_mods_sent_total 0" in other.render().splitlines()
    # A Prometheus parser reads all of it.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("lisp_mappings", "lisp_flow_mods_sent", "lisp_sync_duration_seconds", "lisp_barrier_wait_seconds",
                 "lisp_api_request_duration_seconds", "lisp_datapath_flows_installed", "lisp_process_open_fds",
                 "lisp_process_resident_bytes", "lisp_api_request_seconds", "lisp_store_errors",
                 "lisp_openflow_errors", "lisp_map_cache_misses", "lisp_flows_repaired"):
        assert name in families, name
    assert families["lisp_sync_duration_seconds"].type == "histogram"


def test_the_control_histograms_render_as_the_library_would():
    """They are plain numbers (api/metrics.py, PlainHistogram); the text at
    /metrics must be what prometheus-client's Histogram writes for the same
    observations, bounds included."""
    from prometheus_client import CollectorRegistry, Histogram
    from lisp_controller.api.metrics import CONTROL_BUCKETS, CONTROL_HISTOGRAMS, render
    rng = random.Random(5)
    values = [rng.choice(CONTROL_BUCKETS) for _ in range(50)] + [rng.expovariate(1000) for _ in range(500)] + [3.0]
    m = Metrics(FakeController(mappings=0, desired=0))
    registry = CollectorRegistry(auto_describe=True)
    reference = Histogram("lisp_map_request_seconds", CONTROL_HISTOGRAMS["lisp_map_request_seconds"],
                          buckets=CONTROL_BUCKETS, registry=registry)
    for value in values:
        m.observe("lisp_map_request_seconds", value)
        reference.observe(value)
    ours = [line for line in m.render().splitlines() if "lisp_map_request_seconds" in line]
    assert ours == [line for line in render(registry.collect()).splitlines()]
    assert 'lisp_map_request_seconds_bucket{le="+Inf"} 551' in ours


def test_a_batch_of_control_datagrams_is_observed_as_that_many_observations():
    """The control listener records a batch's datagrams, which share one
    latency, with one call (lisp/listener.py): the text must be that of as
    many single observations."""
    single, batched = Metrics(FakeController(mappings=0, desired=0)), Metrics(FakeController(mappings=0, desired=0))
    for value, count in ((2 ** -15, 7), (2 ** -12, 1), (2 ** -8, 32), (2.0, 3)):   # sums exact in binary
        for _ in range(count):
            single.observe("lisp_map_request_seconds", value)
        batched.observe("lisp_map_request_seconds", value, count)
    ours = [line for line in batched.render().splitlines() if "lisp_map_request_seconds" in line]
    assert ours == [line for line in single.render().splitlines() if "lisp_map_request_seconds" in line]
    assert 'lisp_map_request_seconds_count 43' in ours and 'lisp_map_request_seconds_bucket{le="0.0001"} 7' in ours

"""The controller's metrics, kept with prometheus-client, served at /metrics.

Each controller has a registry of its own (never the library's global
one), so two controllers in one process (the tests) never share a series.
Counters and histograms are recorded as things happen, through the few
methods below; gauges that are facts about the state (mappings, bridges,
each bridge's flows, the process) are computed by a collector when
scraped, so they can never drift from the truth.

The text is rendered here rather than by the library's exposition, which
writes numbers the way Go does: a million flow-mods as ``1e+06``. Integers
are written as integers (exact at any size for the gauges, which are
Python integers; the library keeps counters as floats, exact to 2^53).
The library's ``_created`` series are left out: nothing here reads them.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Iterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from lisp_controller.controller import procinfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, from a cached API read (well under a millisecond) to a bulk
# request of 100,000 mappings or a big bridge's first sync (seconds).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SOURCES = ("config", "endpoint", "api")
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")


class Views(Protocol):
    """What the collector reads at scrape time (the controller app)."""

    state: object  # has .cache (mappings with .source) and .bridges

    def datapaths(self) -> list[dict]: ...


# name -> (help, label names): the counters, by the names the README lists.
COUNTERS = {
    "lisp_flow_mods_sent_total": ("Flow-mods sent to bridges (inside bundles)", ()),
    "lisp_group_mods_sent_total": ("Group-mods (RLOC sets' select groups) sent to bridges (inside bundles)", ()),
    "lisp_openflow_errors_total": ("OpenFlow errors received from bridges", ()),
    "lisp_reconcile_seconds_total": ("Time spent making bridges match the state", ()),
    "lisp_reconciles_total": ("Reconciles (syncs) run", ()),
    "lisp_store_errors_total": ("Changes refused because the store could not be written", ()),
    "lisp_flows_repaired_total": ("Flows of ours found changed on a switch and replaced", ()),
    "lisp_session_failures_total": ("Times a bridge's session failed and started over, by bridge", ("bridge",)),
    "lisp_map_cache_misses_total": ("Packets that missed the map-cache (send-map-request)", ()),
    "lisp_api_requests_total": ("API requests, by method and status", ("method", "status")),
    "lisp_api_request_seconds_total": ("Time spent answering API requests, by method", ("method",)),
    # The LISP control listener, the Map-Server and the Map-Resolver (docs/control-plane.rst).
    "lisp_control_datagrams_total": ("LISP control datagrams received", ()),
    "lisp_control_dropped_total": ("LISP control datagrams dropped before any handler, by reason", ("reason",)),
    "lisp_map_registers_accepted_total": ("Map-Registers accepted", ()),
    "lisp_map_registers_refused_total": ("Map-Registers refused, by reason", ("reason",)),
    "lisp_map_requests_total": ("Encapsulated Map-Requests by outcome: answered, negative (nobody has the "
                                "EID), forwarded (to a registered ETR)", ("outcome",)),
    "lisp_map_requests_refused_total": ("Encapsulated Map-Requests not answered, by reason", ("reason",)),
    "lisp_openflow_connections_closed_total": ("OpenFlow connections closed before or instead of becoming "
                                               "a bridge session, by reason", ("reason",)),
    # Several instances on one etcd store (docs/etcd.rst, "Bridge ownership").
    "lisp_role_changes_total": ("OpenFlow role changes of this instance's connections, by bridge and new role "
                                "(master, slave, or deposed: refused by the switch or its lease gone)",
                                ("bridge", "role")),
}
# Counted for every LISP control datagram: kept as plain numbers and added
# to their series when scraped (``render``), so a datagram costs a dict
# update instead of the library's lock (a green semaphore here) per count.
PER_DATAGRAM = frozenset({"lisp_control_datagrams_total", "lisp_control_dropped_total",
                          "lisp_map_registers_accepted_total", "lisp_map_registers_refused_total",
                          "lisp_map_requests_total", "lisp_map_requests_refused_total"})
# name -> help: histograms of the control listener, from a datagram's arrival
# to its answer; buckets from 100 us (a cached answer) to a second.
CONTROL_HISTOGRAMS = {
    "lisp_map_register_seconds": "Time from a Map-Register's arrival to its answer",
    "lisp_map_request_seconds": "Time from a Map-Request's arrival to its answer",
}
CONTROL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0)


class Metrics:
    def __init__(self, views: Views):
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {name: Counter(name, help_text, labels, registry=self.registry)
                          for name, (help_text, labels) in COUNTERS.items()}
        self._api = Histogram("lisp_api_request_duration_seconds", "API requests by duration, by method",
                              ("method",), buckets=BUCKETS, registry=self.registry)
        self._sync = Histogram("lisp_sync_duration_seconds", "Syncs of a bridge (plan, bundle, barrier) "
                               "by duration, by bridge", ("bridge",), buckets=BUCKETS, registry=self.registry)
        self._barrier = Histogram("lisp_barrier_wait_seconds", "Time a write waited for the connected "
                                  "bridges to confirm it by barrier", buckets=BUCKETS, registry=self.registry)
        self._etcd = Histogram("lisp_etcd_request_seconds", "Requests to etcd that got an answer, by duration, "
                               "by request (kv/txn, kv/range, lease/keepalive...)", ("request",),
                               buckets=BUCKETS, registry=self.registry)
        self._control = {name: PlainHistogram(name, help_text, CONTROL_BUCKETS)
                         for name, help_text in CONTROL_HISTOGRAMS.items()}
        for histogram in self._control.values():
            self.registry.register(histogram)
        # The series of each (name, labels) once found: the LISP control
        # listener counts every datagram, and the library's labels() checks
        # and looks up its arguments on every call.
        self._series: dict[tuple, object] = {}
        self._deferred: dict[tuple, float] = {}   # PER_DATAGRAM counts not yet in their series
        self._followed: list[tuple[ThreadCounts, dict[tuple, float]]] = []   # and what was taken of them
        self.registry.register(_StateCollector(views))

    # -- recording (called by the controller and the API) ------------------
    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add to one of COUNTERS."""
        key = (name, *labels.items())
        if name in PER_DATAGRAM:
            self._deferred[key] = self._deferred.get(key, 0) + amount
            return
        self._series_of(key).inc(amount)

    def _series_of(self, key: tuple):
        series = self._series.get(key)
        if series is None:
            name, labels = key[0], dict(key[1:])
            counter = self._counters[name]
            series = self._series[key] = counter.labels(**labels) if labels else counter
        return series

    def follow(self, counts: ThreadCounts) -> None:
        """Add what another OS thread counts in ``counts`` to these series
        when scraped (the control listener's thread, docs/control-plane.rst)."""
        self._followed.append((counts, {}))
        for name, histogram in counts.histograms.items():
            self._control[name].others.append(histogram)

    def _flush(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for key, amount in deferred.items():
            self._series_of(key).inc(amount)
        for counts, taken in self._followed:
            for key, total in dict(counts.counts).items():   # a copy made in C: the thread cannot change it midway
                amount = total - taken.get(key, 0)
                if amount:
                    taken[key] = total
                    self._series_of(key).inc(amount)

    def observe(self, name: str, seconds: float, count: int = 1) -> None:
        """One of CONTROL_HISTOGRAMS (the control listener's latencies):
        ``count`` datagrams that took ``seconds`` each (a batch)."""
        self._control[name].observe(seconds, count)

    def observe_api(self, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"  # clients choose it: bound the series
        self.inc("lisp_api_requests_total", method=method, status=str(status))
        self.inc("lisp_api_request_seconds_total", seconds, method=method)
        self._api.labels(method=method).observe(seconds)

    def observe_sync(self, bridge: str, seconds: float) -> None:
        """One sync of a bridge (its label), however it was sent."""
        self.inc("lisp_reconciles_total")
        self.inc("lisp_reconcile_seconds_total", seconds)
        self._sync.labels(bridge=bridge).observe(seconds)

    def observe_barrier_wait(self, seconds: float) -> None:
        self._barrier.observe(seconds)

    def observe_etcd(self, request: str, seconds: float) -> None:
        """One request to etcd (its gateway path) and how long it took."""
        self._etcd.labels(request=request).observe(seconds)

    # -- scraping -------------------------------------------------------------
    def render(self) -> str:
        self._flush()
        return render(self.registry.collect())


class PlainHistogram:
    """A histogram without labels kept as plain numbers and written out when
    scraped, as prometheus-client's would be: what each LISP control
    datagram is timed with. The library's takes a lock (a green semaphore
    here) for the sum and again for the bucket: a fifth of the controller's
    time per Map-Request in a profile of the live process
    (docs/performance.rst)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]):
        self.name, self.documentation = name, documentation
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)   # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.others: list[PlainHistogram] = []   # kept by other threads, added in when scraped (Metrics.follow)

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count   # a bucket holds values <= its bound
        self.sum += value * count

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        counts, total_sum = list(self.counts), self.sum
        for other in self.others:   # copies made in C, read while their thread may add to them
            counts = [a + b for a, b in zip(counts, list(other.counts))]
            total_sum += other.sum
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, math.inf), counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total_sum)


class ThreadCounts:
    """Counters and control latencies kept by one OS thread other than the
    hub's: the control listener's, which answers the common Map-Requests
    (docs/control-plane.rst, "The listener thread"). Only that thread
    writes them, as plain numbers (no lock: the library's is a green one
    here, which a native thread must not take); the hub's ``Metrics``
    reads them when scraped (``Metrics.follow``). A scrape may see a
    histogram's count one batch ahead of its sum, never a count lost."""

    def __init__(self) -> None:
        self.counts: dict[tuple, float] = {}   # (name, *labels) -> total so far
        self.histograms = {name: PlainHistogram(name, text, CONTROL_BUCKETS)
                           for name, text in CONTROL_HISTOGRAMS.items()}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, *labels.items())
        self.counts[key] = self.counts.get(key, 0) + amount

    def observe(self, name: str, seconds: float, count: int = 1) -> None:
        self.histograms[name].observe(seconds, count)


class _StateCollector:
    """Gauges computed from the state at scrape time."""

    def __init__(self, views: Views):
        self.views = views

    def describe(self) -> list:
        return []  # names are only known by collecting; nothing to check ahead

    def collect(self) -> Iterator[Metric]:
        state = self.views.state
        counts = dict.fromkeys(SOURCES, 0)
        counts.update(state.cache.sources())  # kept by the map-cache: no pass over a million
        g = GaugeMetricFamily("lisp_mappings", "Mappings in the map-cache, by owner", labels=["source"])
        for source, n in counts.items():
            g.add_metric([source], n)
        yield g
        system = getattr(self.views, "mapping_system", None)
        if system is not None:
            g = GaugeMetricFamily("lisp_registrations", "EID-prefixes registered, by site", labels=["site"])
            for site, n in system.server.counts.items():
                g.add_metric([site], n)
            yield g
        views = [d for d in self.views.datapaths() if d["configured"]]
        yield GaugeMetricFamily("lisp_datapaths_connected", "Configured bridges connected now",
                                value=sum(1 for d in views if d["connected"]))
        yield GaugeMetricFamily("lisp_datapaths_configured", "Bridges in the config", value=len(state.bridges))
        yield GaugeMetricFamily("lisp_datapaths_degraded", "Connected bridges with errors or a failing session",
                                value=sum(1 for d in views if d["connected"] and d.get("degraded")))
        per_bridge = {
            "connected": GaugeMetricFamily("lisp_datapath_connected", "1 if the bridge is connected now",
                                           labels=["bridge"]),
            "degraded": GaugeMetricFamily("lisp_datapath_degraded", "1 if the connected bridge has errors or "
                                          "its session is failing", labels=["bridge"]),
            "flows_desired": GaugeMetricFamily("lisp_datapath_flows_desired", "Flows the bridge should hold "
                                               "(connected bridges)", labels=["bridge"]),
            "flows_installed": GaugeMetricFamily("lisp_datapath_flows_installed", "Flows of ours the bridge "
                                                 "holds (connected bridges)", labels=["bridge"]),
            "flows_rejected": GaugeMetricFamily("lisp_datapath_flows_rejected", "Flows the bridge refused in "
                                                "its last sync (missing from it now)", labels=["bridge"]),
            "flows_repaired": CounterMetricFamily("lisp_datapath_flows_repaired", "Flows found changed on the "
                                                  "bridge and replaced, since it connected", labels=["bridge"]),
            "groups_desired": GaugeMetricFamily("lisp_datapath_groups_desired", "Select groups (RLOC sets) the "
                                                "bridge should hold (connected bridges)", labels=["bridge"]),
            "groups_installed": GaugeMetricFamily("lisp_datapath_groups_installed", "Select groups of ours the "
                                                  "bridge holds (connected bridges)", labels=["bridge"]),
        }
        for d in views:
            per_bridge["connected"].add_metric([d["bridge"]], int(d["connected"]))
            if not d["connected"]:
                continue
            per_bridge["degraded"].add_metric([d["bridge"]], int(bool(d.get("degraded"))))
            for key in ("flows_desired", "flows_installed", "flows_rejected", "flows_repaired",
                        "groups_desired", "groups_installed"):
                if d.get(key) is not None:
                    per_bridge[key].add_metric([d["bridge"]], d[key])
        yield from per_bridge.values()
        yield from _path_mtu(views)
        yield GaugeMetricFamily("lisp_process_resident_bytes", "Resident memory of the controller",
                                value=procinfo.resident_bytes())
        yield GaugeMetricFamily("lisp_process_open_fds", "Open file descriptors (bridges, API clients, store)",
                                value=procinfo.open_fds())


def _path_mtu(views: list[dict]) -> Iterator[Metric]:
    """Each bridge's tunnel MTU and its packets too big for it, from the
    datapath views (docs/mtu.rst)."""
    mtu = GaugeMetricFamily("lisp_tunnel_mtu", "Largest inner packet each bridge's tunnel carries, "
                            "by RLOC family", labels=["bridge", "rloc_family"])
    handled = CounterMetricFamily("lisp_packets_too_big", "Packets too big for the tunnel that reached the "
                                  "controller, by what it did (icmp, fragmented, dropped, ignored)",
                                  labels=["bridge", "action"])
    seen = GaugeMetricFamily("lisp_packets_too_big_seen", "Packets too big for the tunnel as the bridge's "
                             "meter counted them: passed to the controller or dropped over its rate",
                             labels=["bridge", "meter"])
    for d in views:
        if "tunnel_mtu" not in d:
            continue
        for family, value in (("ipv4", d["tunnel_mtu"]["ipv4_rloc"]), ("ipv6", d["tunnel_mtu"]["ipv6_rloc"])):
            mtu.add_metric([d["bridge"], family], value)
        too_big = d["too_big"]
        for action in ("icmp", "fragmented", "dropped", "ignored"):
            handled.add_metric([d["bridge"], action], too_big[action])
        if too_big["packets"] is not None:
            seen.add_metric([d["bridge"], "passed"], too_big["packets"] - too_big["over_rate"])
            seen.add_metric([d["bridge"], "dropped"], too_big["over_rate"])
    yield from (mtu, handled, seen)


def render(metrics: Iterable[Metric]) -> str:
    """The Prometheus text format (0.0.4), integers as integers."""
    lines = []
    for metric in metrics:
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        lines.append(f"# HELP {name} {_escape_help(metric.documentation)}")
        lines.append(f"# TYPE {name} {metric.type}")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {number(sample.value)}" if labels
                         else f"{sample.name} {number(sample.value)}")
    return "\n".join(lines) + "\n"


def number(value: float | int) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")

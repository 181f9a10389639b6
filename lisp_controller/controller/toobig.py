"""The controller's side of path MTU discovery (docs/mtu.rst): each
bridge's meter, the packets too big for the tunnel that it lets through,
and their counts. What to answer is decided by the pure
`pipeline/pathmtu.py`; this module does the I/O around it.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Iterable

from lisp_controller.api.metrics import Metrics
from lisp_controller.controller.reconcile import meter_plan
from lisp_controller.model import Bridge
from lisp_controller.openflow.encode import METER_ADD, METER_MODIFY, meter_mod, packet_out
from lisp_controller.openflow.switch import Switch, SwitchError
from lisp_controller.pipeline import pathmtu
from lisp_controller.pipeline.compiler import METER_TOO_BIG, compile_meters
from lisp_controller.pipeline.profiles import tunnel_mtu

LOG = logging.getLogger("lisp_controller")
DONE = {"icmp": "sender told the path MTU (ICMP)", "fragmented": "fragmented into the tunnel",
        "dropped": 'dropped (IPv4 without DF; too_big_without_df = "drop")',
        "ignored": "dropped (nothing to answer)"}
COUNTER = "lisp_packets_too_big_total"


class PathMtu:
    def __init__(self, metrics: Metrics, bridges: Callable[[], Iterable[Bridge]],
                 refresh: Callable[[], object]):
        """`bridges` gives the configured bridges now; `refresh` asks for
        the switches' counters to be read again if they are old (without
        waiting), as the status page's counters are."""
        self.metrics = metrics
        self.refresh = refresh
        # Per bridge label, as the switch counted at the last read: packets
        # that entered the meter (every packet too big for the tunnel), and
        # those it dropped for being over its rate.
        self.seen: dict[str, tuple[int, int]] = {}
        metrics.counter(COUNTER, "Packets too big for the tunnel that reached the controller, by bridge "
                        "and what was done (icmp, fragmented, dropped, ignored)")
        metrics.gauge("lisp_packets_too_big_seen", "Packets too big for the tunnel as each bridge's meter "
                      "counted them: passed to the controller, or dropped over the meter's rate",
                      self._seen_metric)
        metrics.gauge("lisp_tunnel_mtu", "Largest inner packet each bridge's tunnel carries, by RLOC family",
                      lambda: {(("bridge", b.label), ("rloc_family", f"ipv{v}")):
                               float(tunnel_mtu(b.underlay_mtu, b.profile, v))
                               for b in bridges() for v in (4, 6)})

    def sync_meters(self, switch: Switch, bridge: Bridge, label: str) -> str | None:
        """Make the bridge hold our meters, before the flows that use them;
        as with flows, a meter that is right is not sent again. Returns the
        error if the switch refused one (the flows using it are then
        refused too, and named)."""
        try:
            for command, meter in meter_plan(switch.meters(), compile_meters(bridge)):
                switch.send_confirmed(meter_mod(meter, METER_ADD if command == "add" else METER_MODIFY),
                                      f"meter {meter.meter_id}")
                LOG.info("bridge %s: meter %d %s: %d packets/s, burst %d", label, meter.meter_id,
                         "added" if command == "add" else "changed", meter.rate, meter.burst)
        except SwitchError as e:
            if switch.closed:
                raise
            LOG.error("%s", e)
            return str(e)
        return None

    def packet_in(self, switch: Switch, bridge: Bridge, ports: dict[str, int], msg, label: str) -> None:
        """A packet the too-big table sent through the meter: answer its
        sender, or fragment or drop it."""
        match = msg.match
        tun_dst = match.get("tun_ipv6_dst") or match.get("tun_ipv4_dst")
        pin = pathmtu.PacketIn(bytes(msg.data), match["in_port"], match.get("tunnel_id", 0),
                               ipaddress.ip_address(tun_dst) if tun_dst else None)
        reply = pathmtu.handle(bridge, ports, pin)
        for actions, frame in reply.packet_outs:
            switch.send(packet_out(actions, frame))
        self.metrics.inc(COUNTER, bridge=bridge.label, action=reply.action)
        first = self.metrics.value(COUNTER, bridge=bridge.label, action=reply.action) == 1
        (LOG.info if first else LOG.debug)(
            "bridge %s: a %d-byte packet from port %d is too big for the tunnel (MTU %d): %s%s",
            label, len(pin.frame) - pathmtu.ETH_HEADER, pin.in_port, reply.mtu, DONE[reply.action],
            " (further ones are counted, not logged)" if first else "")

    def read(self, switch: Switch, label: str, timeout: float) -> None:
        """Read the bridge's meter counts (with the map-cache counters)."""
        self.seen[label] = switch.meter_counts(METER_TOO_BIG, timeout)

    def view(self, bridge: Bridge) -> dict:
        """What the API and the status page show of a bridge's MTU."""
        self.refresh()
        seen, over_rate = self.seen.get(bridge.label, (None, None))
        return {"underlay_mtu": bridge.underlay_mtu,
                "tunnel_mtu": {"ipv4_rloc": tunnel_mtu(bridge.underlay_mtu, bridge.profile, 4),
                               "ipv6_rloc": tunnel_mtu(bridge.underlay_mtu, bridge.profile, 6)},
                "too_big": {"packets": seen, "over_rate": over_rate,
                            **{action: int(self.metrics.value(COUNTER, bridge=bridge.label, action=action))
                               for action in DONE}}}

    def _seen_metric(self) -> dict:
        self.refresh()
        out = {}
        for label, (seen, over_rate) in self.seen.items():
            out[(("bridge", label), ("meter", "passed"))] = float(seen - over_rate)
            out[(("bridge", label), ("meter", "dropped"))] = float(over_rate)
        return out

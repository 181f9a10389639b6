"""The controller's side of path MTU discovery (docs/mtu.rst): each
bridge's meter, the packets too big for the tunnel that it lets through,
and their counts (shown by the API's datapath views, and from them by the
metrics). What to answer is decided by the pure
`pipeline/pathmtu.py`; this module does the I/O around it.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable

from lisp_controller.controller.reconcile import meter_plan
from lisp_controller.model import Bridge
from lisp_controller.openflow.encode import METER_ADD, METER_MODIFY, meter_mod, packet_out
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.switch import Switch
from lisp_controller.pipeline import pathmtu
from lisp_controller.pipeline.compiler import METER_TOO_BIG, compile_meters
from lisp_controller.pipeline.profiles import tunnel_mtu

LOG = logging.getLogger("lisp_controller")
DONE = {"icmp": "sender told the path MTU (ICMP)", "fragmented": "fragmented into the tunnel",
        "dropped": 'dropped (IPv4 without DF; too_big_without_df = "drop")',
        "ignored": "dropped (nothing to answer)"}


class PathMtu:
    def __init__(self, refresh: Callable[[], object]):
        """`refresh` asks for the switches' counters to be read again if
        they are old (without waiting), as the status page's counters are."""
        self.refresh = refresh
        # Per bridge label, as the switch counted at the last read: packets
        # that entered the meter (every packet too big for the tunnel), and
        # those it dropped for being over its rate.
        self.seen: dict[str, tuple[int, int]] = {}
        # (bridge label, action) -> packets the controller handled so.
        self.handled: dict[tuple[str, str], int] = {}

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
            if switch.closed or e.not_master:  # not master (any more): no write of ours goes
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
        key = (bridge.label, reply.action)
        self.handled[key] = self.handled.get(key, 0) + 1
        first = self.handled[key] == 1
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
                            **{action: self.handled.get((bridge.label, action), 0) for action in DONE}}}

"""What a switch's refusal means: `SwitchError`, whether a refusal says
this connection is not the bridge's master, and an OpenFlow error in
words (type and code names from os-ken's tables) for logs and API answers.
"""
from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.errors import LispControllerError


class SwitchError(LispControllerError):
    """The switch failed a request, timed out, or went away. `refusal`:
    the switch's error message, if it refused."""

    refusal: object = None

    @property
    def not_master(self) -> bool:
        """The switch refused because this connection is not (or no longer)
        its master: a SLAVE's write (OFPBRC_IS_SLAVE) or a MASTER request
        with a generation older than one it has seen (OFPRRFC_STALE)."""
        return is_not_master(self.refusal)

    @classmethod
    def refused(cls, text: str, refusal: object) -> "SwitchError":
        """`text` with the switch's words appended, keeping its refusal."""
        error = cls(f"{text}: {describe_error(refusal)}")
        error.refusal = refusal
        return error


def is_not_master(refusal: object) -> bool:
    """The switch's error says this connection may not write (or claim)
    the bridge: OFPBRC_IS_SLAVE or OFPRRFC_STALE (see SwitchError)."""
    code = (getattr(refusal, "type", None), getattr(refusal, "code", None))
    return code in ((ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE),
                    (ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE))


ROLE_NAMES = {ofp.OFPCR_ROLE_NOCHANGE: "NOCHANGE", ofp.OFPCR_ROLE_EQUAL: "EQUAL",
              ofp.OFPCR_ROLE_MASTER: "MASTER", ofp.OFPCR_ROLE_SLAVE: "SLAVE"}



def describe_error(err: object) -> str:
    """An OpenFlow error as words: type and code names from os-ken's tables."""
    if isinstance(err, str):
        return err
    etype, code = getattr(err, "type", None), getattr(err, "code", None)
    type_name = _ERROR_TYPES.get(etype, f"type {etype}")
    code_name = _ERROR_CODES.get((etype, code), f"code {code}")
    return f"{type_name}/{code_name}"


def _error_names():
    types, codes = {}, {}
    prefixes = {}
    for name in dir(ofp):
        if name.startswith("OFPET_"):
            value = getattr(ofp, name)
            types[value] = name
    # Code constants are named after their type (OFPBAC_ for BAD_ACTION...).
    type_prefix = {
        ofp.OFPET_HELLO_FAILED: "OFPHFC_", ofp.OFPET_BAD_REQUEST: "OFPBRC_",
        ofp.OFPET_BAD_ACTION: "OFPBAC_", ofp.OFPET_BAD_INSTRUCTION: "OFPBIC_",
        ofp.OFPET_BAD_MATCH: "OFPBMC_", ofp.OFPET_FLOW_MOD_FAILED: "OFPFMFC_",
        ofp.OFPET_GROUP_MOD_FAILED: "OFPGMFC_", ofp.OFPET_PORT_MOD_FAILED: "OFPPMFC_",
        ofp.OFPET_TABLE_MOD_FAILED: "OFPTMFC_", ofp.OFPET_QUEUE_OP_FAILED: "OFPQOFC_",
        ofp.OFPET_SWITCH_CONFIG_FAILED: "OFPSCFC_", ofp.OFPET_ROLE_REQUEST_FAILED: "OFPRRFC_",
        ofp.OFPET_METER_MOD_FAILED: "OFPMMFC_", ofp.OFPET_TABLE_FEATURES_FAILED: "OFPTFFC_",
    }
    for etype, prefix in type_prefix.items():
        prefixes[prefix] = etype
    for name in dir(ofp):
        for prefix, etype in prefixes.items():
            if name.startswith(prefix):
                codes[(etype, getattr(ofp, name))] = name
    return types, codes


_ERROR_TYPES, _ERROR_CODES = _error_names()

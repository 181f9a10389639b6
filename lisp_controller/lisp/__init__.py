"""The LISP control-plane message codec (RFC 9301, RFC 8060 LCAF) and
Map-Register/Map-Notify authentication: pure functions over immutable values,
no I/O.

    message = decode(udp_payload)        # or LispDecodeError, nothing else
    udp_payload = encode(message)        # byte-identical for decoded messages
    wire = sign(MapRegister(...), AuthKey(1, b"password"))
    verify(wire, b"password")
"""
from .addresses import (ENCAP_GENEVE, ENCAP_GUE, ENCAP_LISP, ENCAP_LISP_L2, ENCAP_NVGRE, ENCAP_VXLAN,
                        ENCAP_VXLAN_GPE, NO_ADDRESS, Address, AfiListAddress, EncapsulationFormatAddress,
                        InstanceIdAddress, LispDecodeError, NoAddress, UnknownLcafAddress)
from .auth import ALG_HMAC_SHA_1, ALG_HMAC_SHA_256, AuthKey, key_and_alg, sign, verify
from .headers import internet_checksum, udp_checksum
from .messages import (LISP_CONTROL_PORT, EncapsulatedControlMessage, MapNotify, MapNotifyAck, MapRegister,
                       MapReply, MapRequest, Message, decode, encode, unwrap_ecm, wrap_in_ecm)
from .records import Action, EidRecord, LocatorRecord, MapRequestRecord

__all__ = [
    "ALG_HMAC_SHA_1", "ALG_HMAC_SHA_256", "Action", "Address", "AfiListAddress", "AuthKey", "ENCAP_GENEVE",
    "ENCAP_GUE", "ENCAP_LISP", "ENCAP_LISP_L2", "ENCAP_NVGRE", "ENCAP_VXLAN", "ENCAP_VXLAN_GPE", "EidRecord",
    "EncapsulatedControlMessage", "EncapsulationFormatAddress", "InstanceIdAddress", "LISP_CONTROL_PORT",
    "LispDecodeError", "LocatorRecord", "MapNotify", "MapNotifyAck", "MapRegister", "MapReply", "MapRequest",
    "MapRequestRecord", "Message", "NO_ADDRESS", "NoAddress", "UnknownLcafAddress", "decode", "encode",
    "internet_checksum", "key_and_alg", "sign", "udp_checksum", "unwrap_ecm", "verify", "wrap_in_ecm",
]

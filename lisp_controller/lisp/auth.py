"""Map-Register / Map-Notify authentication (RFC 9301 sections 5.6 and 5.7).

The 16-bit Key ID field holds the key-id (which shared key) in its high byte
and the alg-id (which HMAC) in its low byte. The HMAC covers the whole
message, trailing bytes included, with the authentication data set to zero;
the key is the configured password as bytes.

Keys never appear in logs or reprs: ``AuthKey`` hides its secret, and the
functions here do no I/O.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace
from typing import Union

from .addresses import LispDecodeError
from .messages import MAP_NOTIFY, MAP_NOTIFY_ACK, MAP_REGISTER, _Registration, decode, encode

ALG_NONE, ALG_HMAC_SHA_1, ALG_HMAC_SHA_256 = 0, 1, 2
# alg-id -> (hash, authentication data length): RFC 9301 section 5.6, IANA
# "LISP Algorithm ID Numbers". lispers.net sends the full 32-byte SHA-256 HMAC.
ALGORITHMS = {ALG_HMAC_SHA_1: (hashlib.sha1, 20), ALG_HMAC_SHA_256: (hashlib.sha256, 32)}
_AUTH_OFFSET = 16   # word 0, nonce, Key ID, auth data length


@dataclass(frozen=True)
class AuthKey:
    """A shared secret with the key-id and alg-id it is used under.
    The secret is left out of ``repr`` so a logged key shows only its id."""

    key_id: int
    secret: bytes = field(repr=False)
    alg_id: int = ALG_HMAC_SHA_256

    def __post_init__(self) -> None:
        if isinstance(self.secret, str):
            object.__setattr__(self, "secret", self.secret.encode())
        if not 0 <= self.key_id <= 255 or self.alg_id not in ALGORITHMS:
            raise ValueError(f"key-id {self.key_id} / alg-id {self.alg_id} not usable")

    def __repr__(self) -> str:
        return f"AuthKey(key_id={self.key_id}, alg_id={self.alg_id}, secret=<hidden>)"


Secret = Union[AuthKey, bytes, str]
Signable = Union[_Registration, bytes]


def _secret_bytes(key: Secret) -> bytes:
    if isinstance(key, AuthKey):
        return key.secret
    return key.encode() if isinstance(key, str) else bytes(key)


def compute_hmac(raw: bytes, secret: bytes, alg_id: int) -> bytes:
    """The HMAC of ``raw`` (a whole Map-Register/Notify) with its auth data zeroed."""
    digest, length = ALGORITHMS[alg_id]
    auth_length = int.from_bytes(raw[14:16], "big")
    zeroed = raw[:_AUTH_OFFSET] + bytes(auth_length) + raw[_AUTH_OFFSET + auth_length:]
    return hmac.new(secret, zeroed, digest).digest()


def sign(message: Signable, key: Secret, key_id: int | None = None, alg_id: int | None = None) -> bytes:
    """The wire bytes of ``message`` (a Map-Register, Map-Notify or
    Map-Notify-Ack value, or its bytes) authenticated with ``key``.

    ``key`` is an ``AuthKey`` (whose key-id and alg-id are used) or a password
    as ``bytes``/``str``, in which case ``key_id`` is required and ``alg_id``
    defaults to HMAC-SHA-256. Raises ``LispDecodeError`` for bytes that do not
    decode to one of those messages.
    """
    if isinstance(key, AuthKey):
        key_id = key.key_id if key_id is None else key_id
        alg_id = key.alg_id if alg_id is None else alg_id
    if key_id is None:
        raise ValueError("key_id is required with a plain password")
    alg_id = ALG_HMAC_SHA_256 if alg_id is None else alg_id
    if alg_id not in ALGORITHMS:
        raise ValueError(f"unsupported alg-id {alg_id}")
    if isinstance(message, (bytes, bytearray, memoryview)):
        message = decode(bytes(message))
    if not isinstance(message, _Registration):
        raise LispDecodeError(f"{type(message).__name__} carries no authentication data")
    unsigned = encode(replace(message, key_id=key_id, alg_id=alg_id, auth_data=bytes(ALGORITHMS[alg_id][1])))
    mac = compute_hmac(unsigned, _secret_bytes(key), alg_id)
    return unsigned[:_AUTH_OFFSET] + mac + unsigned[_AUTH_OFFSET + len(mac):]


def verify(raw: bytes, key: Secret) -> bool:
    """Whether ``raw`` (a Map-Register, Map-Notify or Map-Notify-Ack as
    received) carries a valid HMAC under ``key``.

    False, never an exception, for anything else: an unknown alg-id, an
    authentication length that does not match the algorithm, a key-id other
    than an ``AuthKey``'s, bytes too short, or another message type. Only the
    authentication header is parsed; decode the message separately.
    """
    raw = bytes(raw)
    if len(raw) < _AUTH_OFFSET or raw[0] >> 4 not in (MAP_REGISTER, MAP_NOTIFY, MAP_NOTIFY_ACK):
        return False
    key_id, alg_id = raw[12], raw[13]
    if alg_id not in ALGORITHMS or (isinstance(key, AuthKey) and key.key_id != key_id):
        return False
    length = ALGORITHMS[alg_id][1]
    if int.from_bytes(raw[14:16], "big") != length or len(raw) < _AUTH_OFFSET + length:
        return False
    received = raw[_AUTH_OFFSET:_AUTH_OFFSET + length]
    return hmac.compare_digest(received, compute_hmac(raw, _secret_bytes(key), alg_id))


def key_and_alg(raw: bytes) -> tuple[int, int]:
    """The key-id and alg-id a received Map-Register/Notify says it used, to
    pick the key before ``verify``. Raises ``LispDecodeError`` if too short."""
    if len(raw) < _AUTH_OFFSET:
        raise LispDecodeError("too short for an authentication header")
    return raw[12], raw[13]

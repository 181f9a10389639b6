"""TLS for OpenFlow (OVS's `ssl:` targets) and for the REST API. Optional.

OpenFlow: the switches must present a certificate signed by the configured
CA, and the controller presents its own (OVS checks it against the CA
given to `ovs-vsctl set-ssl`). A CA-signed certificate only says "one of
our switches": which bridge it may speak for is bound per bridge by
`tls_peer` (its certificate's common name or SHA-256 fingerprint), checked
when the switch names its datapath ID (openflow/admission.py).

Contexts are built (and the files read) before anything listens, so a
missing or mismatched key stops the start with a clear message.
"""
from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass

from lisp_controller.errors import LispControllerError


class TlsError(LispControllerError):
    """A key, certificate or CA file cannot be used, or a peer's handshake
    failed; the message says which."""


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later; with `ca`, peers must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"certificate {cert} with key {key}: {reason(e)}") from None
    if ca is not None:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"CA certificates {ca}: {reason(e)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reason(e: Exception) -> str:
    """What went wrong in a TLS or socket error, in a few words."""
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


@dataclass(frozen=True)
class PeerIdentity:
    """Who a switch's certificate says it is: what `tls_peer` is matched against."""

    common_name: str | None
    sha256: str  # of the DER certificate, lower-case hex without colons

    def __str__(self) -> str:
        return f"{self.common_name!r} (sha256:{self.sha256[:16]}...)"


@dataclass(frozen=True)
class TlsPeer:
    """A bridge's expected certificate: `sha256:<fingerprint>` (that one
    certificate) or a common name (any certificate the CA issued to it)."""

    kind: str  # "sha256" | "cn"
    value: str

    def matches(self, peer: PeerIdentity | None) -> bool:
        if peer is None:
            return False
        return peer.sha256 == self.value if self.kind == "sha256" else peer.common_name == self.value

    def __str__(self) -> str:
        return f"sha256:{self.value}" if self.kind == "sha256" else f"CN={self.value}"


_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def parse_tls_peer(value: object) -> TlsPeer:
    """`sha256:` and 64 hex digits (colons allowed, as `openssl x509
    -fingerprint -sha256` prints them), or a certificate common name.
    ValueError says what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be 'sha256:<fingerprint>' or a certificate common name, got {value!r}")
    if value.lower().startswith("sha256:"):
        digits = value[7:].replace(":", "").lower()
        if not _FINGERPRINT.fullmatch(digits):
            raise ValueError(f"{value!r}: a SHA-256 fingerprint is 64 hex digits")
        return TlsPeer("sha256", digits)
    return TlsPeer("cn", value)


def handshake(ctx: ssl.SSLContext, sock, timeout: float) -> tuple[object, PeerIdentity | None]:
    """The server side of a TLS handshake, each step within `timeout`
    seconds: the encrypted socket and who the peer's certificate says it
    is. TlsError says why not (a stranger, a wrong CA, a port scan)."""
    sock.settimeout(max(timeout, 0.01))
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
        der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise TlsError(reason(e)) from None
    peer = None
    if der:
        subject = dict(item for rdn in (tls.getpeercert() or {}).get("subject", ()) for item in rdn)
        peer = PeerIdentity(subject.get("commonName"), hashlib.sha256(der).hexdigest())
    return tls, peer

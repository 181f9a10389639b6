"""TLS for OpenFlow (OVS's `ssl:` targets) and for the REST API. Optional.

OpenFlow: the switches must present a certificate signed by the configured
CA, and the controller presents its own (OVS checks it against the CA
given to `ovs-vsctl set-ssl`). os-ken has such a server too, but a failed
handshake there ends its greenthread with a traceback; here it is one log
line naming the peer and the reason.

Contexts are built (and the files read) before anything listens, so a
missing or mismatched key stops the start with a clear message.
"""
from __future__ import annotations

import logging
import ssl
from typing import Callable

from lisp_controller.errors import LispControllerError

LOG = logging.getLogger("lisp_controller.openflow.tls")
HANDSHAKE_TIMEOUT = 10.0  # seconds a peer may take to finish the TLS handshake


class TlsError(LispControllerError):
    """A key, certificate or CA file cannot be used; the message says which."""


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


def serve_openflow(host: str, port: int, ctx: ssl.SSLContext,
                   handle: Callable[[object, tuple], None]) -> None:
    """Accept switches on host:port, handshake each in its own greenthread,
    and hand the encrypted socket to os-ken's `handle` (its
    datapath_connection_factory). Runs forever."""
    from os_ken.lib import hub

    server = hub.listen((host, port))
    while True:
        sock, addr = server.accept()
        hub.spawn(_handshake, ctx, sock, addr, handle)


def _handshake(ctx: ssl.SSLContext, sock, addr: tuple, handle) -> None:
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError) as e:  # a stranger, a wrong CA, a port scan
        LOG.warning("OpenFlow TLS handshake from %s:%s refused: %s", addr[0], addr[1], reason(e))
        sock.close()
        return
    peer = tls.getpeercert() or {}
    subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
    LOG.info("OpenFlow TLS connection from %s:%s, certificate %r", addr[0], addr[1],
             subject.get("commonName", "?"))
    handle(tls, addr)

"""The status page's files (lisp_controller/api/web/), served by the API.

Read once from the installed package, so only files that ship can be served
(no path from a request ever reaches the file system), each with its type
and an ETag so a polling browser re-downloads nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
         ".svg": "image/svg+xml", ".png": "image/png"}
# The page loads only its own files and talks only to its own API.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(package: str = "lisp_controller.api", folder: str = "web") -> dict[str, Asset]:
    """Every servable file of the page by name (no subfolders)."""
    assets = {}
    root = resources.files(package) / folder
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, TYPES[suffix], hashlib.sha256(body).hexdigest()[:20])
    return assets

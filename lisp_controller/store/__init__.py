"""Durable storage of what the API was told (docs/architecture.rst): the
interface (`base.py`), SQLite on this host (`sqlite.py`, the default) and an
etcd cluster shared by several controllers (`etcd.py`, docs/etcd.rst)."""
from __future__ import annotations

from lisp_controller.store.base import Delta, Listener, Request, Store, StoreError, StoreStale

__all__ = ["Delta", "Listener", "Request", "Store", "StoreError", "StoreStale", "open_store"]


def open_store(config, sqlite_path: str | None = None, etcd_password: str | None = None) -> Store:
    """The store the config names: etcd when `[store] backend = "etcd"`,
    otherwise SQLite at `sqlite_path` (``serve --store``) or `[store] path`.
    Raises StoreError if it cannot be opened."""
    if config.etcd is not None:
        from lisp_controller.store.etcd import EtcdStore

        return EtcdStore(config.etcd, password=etcd_password)
    from lisp_controller.store.sqlite import Store as SqliteStore

    return SqliteStore(sqlite_path or config.store_path)

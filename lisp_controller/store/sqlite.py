"""SQLite persistence for API mappings and API endpoints: the store is the truth.

One transaction per request: a crash at any point leaves either all of a
request or none of it. WAL with synchronous=FULL, so a committed request
also survives a power cut. Config-owned entries are never stored.

A request sent with an Idempotency-Key is recorded in the same
transaction as its change (store/base.py, `Request`).

The one connection is used one step at a time (controller/offhub.py,
`Turns`): a big write runs on a native thread, and a read or the record of
an answer that the hub asks for meanwhile waits for that transaction to
end instead of running inside it (and being rolled back with it).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote
from typing import ContextManager, Iterable

from lisp_controller.controller.offhub import Turns
from lisp_controller.model import Endpoint, Mapping
from lisp_controller.store.base import REQUEST_KEEP, Listener, Request, StoreError
from lisp_controller.store.rows import endpoint_from_row, endpoint_row, mapping_rows, mappings_from_rows

__all__ = ["Store", "StoreError"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mappings (
    iid INTEGER NOT NULL, eid TEXT NOT NULL, rlocs TEXT NOT NULL, ttl INTEGER,
    action TEXT NOT NULL, expires REAL, PRIMARY KEY (iid, eid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS endpoints (
    bridge TEXT NOT NULL, port TEXT NOT NULL, mac TEXT NOT NULL, iid INTEGER NOT NULL,
    eids TEXT NOT NULL, gateway TEXT, PRIMARY KEY (bridge, port)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, path TEXT NOT NULL, fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL,
    answered INTEGER NOT NULL) WITHOUT ROWID;
"""


def _wrap(path: Path, doing: str, exc: Exception) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        text = "file is not an SQLite database (corrupt, or another file)"
    elif "readonly" in text or "read-only" in text:
        text = "the file or its directory is read-only"
    elif "disk is full" in text or "database or disk is full" in text:
        text = "the disk is full"
    elif "unable to open" in text:
        text = f"cannot open the file ({_os_reason(path)})"
    return StoreError(f"store {path}: cannot {doing}: {text}")


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _os_reason(path: Path) -> str:
    """SQLite says only "unable to open database file"; the system says why."""
    for target, flags in ((path, os.O_RDWR | os.O_CREAT), (path.parent, os.O_RDONLY)):
        try:
            os.close(os.open(target, flags, 0o600))
        except OSError as e:
            return f"{target}: {e.strerror.lower()}"
    return "reason unknown"


class Store:
    """The store of one controller, in one SQLite file (store/base.py)."""

    seq = None  # one controller: no order to share

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(self.path)
        # Why changes cannot be stored, when the store had to be opened
        # read-only; None when it is writable.
        self.read_only: str | None = None
        self._turns = Turns()  # every use of `db` (the module docstring)
        self.db = self._open_any()

    def _open_any(self) -> sqlite3.Connection:
        try:
            db = self._open()
        except StoreError:
            # A store on a read-only filesystem still holds the truth: the
            # bridges get it, and changes get 503 until it is writable.
            if not (self.path.is_file() and _read_only_fs(self.path.parent)):
                raise
            db = self._open_frozen()
        # SQLite may also have opened it read-only without a word.
        self.read_only = f"store {self.path}: cannot write: the file or its directory is read-only" \
            if _read_only_fs(self.path.parent) else None
        return db

    def _open(self) -> sqlite3.Connection:
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                self._check_schema(row)
            db.execute("PRAGMA quick_check").fetchone()
            return db
        except (sqlite3.Error, OSError, StoreError) as exc:
            if db is not None:
                db.close()
            raise exc if isinstance(exc, StoreError) else _wrap(self.path, "open", exc) from None

    def _open_frozen(self) -> sqlite3.Connection:
        """Read-only and without locks (SQLite's immutable mode): right only
        because a read-only filesystem guarantees nobody changes the file."""
        try:
            db = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1", uri=True,
                                 isolation_level=None, check_same_thread=False)
            self._check_schema(db.execute("SELECT value FROM meta WHERE key='schema'").fetchone())
            db.execute("PRAGMA quick_check").fetchone()
            return db
        except sqlite3.Error as exc:
            raise _wrap(self.path, "open", exc) from None

    def _check_schema(self, row) -> None:
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"store {self.path}: schema version {row and row[0]}, expected {SCHEMA_VERSION}")

    def _writable(self) -> bool:
        """Reopen a read-only store for writing if its filesystem allows it now."""
        if self.read_only is None:
            return True
        if _read_only_fs(self.path.parent):
            return False
        # Closed first: a second connection would share the first one's
        # read-only view of the WAL index.
        self.db.close()
        self.db = self._open_any()
        return self.read_only is None

    def close(self) -> None:
        self._turns.run(False, self.db.close)

    def follow(self, on_change: Listener, lock: ContextManager) -> None:
        """Nothing to follow: this controller is the only writer."""

    def catch_up(self, timeout: float) -> bool:
        return True

    def applied(self, seq: int) -> None:
        """No other controller to tell."""

    def wait_applied(self, seq: int, timeout: float) -> list[dict]:
        return []

    def load(self) -> tuple[list[Mapping], list[tuple[str, Endpoint]]]:
        return self._turns.run(False, self._load)

    def _load(self) -> tuple[list[Mapping], list[tuple[str, Endpoint]]]:
        try:
            mappings = mappings_from_rows(self.db.execute(
                "SELECT iid, eid, rlocs, ttl, action, expires FROM mappings"))
            endpoints = [endpoint_from_row(row) for row in self.db.execute(
                "SELECT bridge, port, mac, iid, eids, gateway FROM endpoints")]
        except (sqlite3.Error, ValueError) as exc:
            raise _wrap(self.path, "read", exc) from None
        return mappings, endpoints

    def write(self, put: Iterable[Mapping] = (), delete: Iterable[tuple] = (), replace_all: bool = False,
              put_endpoints: Iterable[tuple[str, Endpoint]] = (),
              delete_endpoints: Iterable[tuple[str, str]] = (), request: Request | None = None,
              big: bool = False) -> None:
        """One transaction: everything or nothing, the request's record
        included; a big one on a native thread (SQLite lets the interpreter
        lock go while it works: controller/offhub.py)."""
        self._turns.run(big, self._write, put, delete, replace_all, put_endpoints, delete_endpoints, request)

    def _write(self, put: Iterable[Mapping], delete: Iterable[tuple], replace_all: bool,
               put_endpoints: Iterable[tuple[str, Endpoint]], delete_endpoints: Iterable[tuple[str, str]],
               request: Request | None) -> None:
        if not self._writable():
            raise StoreError(self.read_only)
        try:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if replace_all:
                    cur.execute("DELETE FROM mappings")
                cur.executemany("DELETE FROM mappings WHERE iid=? AND eid=?",
                                ((iid, str(eid)) for iid, eid in delete))
                cur.executemany("INSERT OR REPLACE INTO mappings VALUES (?,?,?,?,?,?)", mapping_rows(put))
                cur.executemany("DELETE FROM endpoints WHERE bridge=? AND port=?", delete_endpoints)
                cur.executemany("INSERT OR REPLACE INTO endpoints VALUES (?,?,?,?,?,?)",
                                (endpoint_row(b, e) for b, e in put_endpoints))
                if request is not None:
                    cur.execute("DELETE FROM requests WHERE created < ?", (request.created - REQUEST_KEEP,))
                    cur.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?)",
                                (*request[:-1], int(request.answered)))
                cur.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _wrap(self.path, "write", exc) from None

    def record_answer(self, key: str, body: str) -> None:
        """The complete answer of a recorded request, once it is known."""
        self._turns.run(False, self._record_answer, key, body)

    def _record_answer(self, key: str, body: str) -> None:
        try:
            self.db.execute("UPDATE requests SET body=?, answered=1 WHERE key=?", (body, key))
        except sqlite3.Error as exc:
            raise _wrap(self.path, "write", exc) from None

    def request(self, key: str) -> Request | None:
        """The recorded request with this key, if one was committed in the
        last REQUEST_KEEP seconds."""
        return self._turns.run(False, self._request, key)

    def _request(self, key: str) -> Request | None:
        try:
            row = self.db.execute("SELECT * FROM requests WHERE key=? AND created >= ?",
                                  (key, time.time() - REQUEST_KEEP)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store from before requests were recorded, read-only
                return None
            raise _wrap(self.path, "read", exc) from None
        except sqlite3.Error as exc:
            raise _wrap(self.path, "read", exc) from None
        return None if row is None else Request(*row[:-1], answered=bool(row[-1]))

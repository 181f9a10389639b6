"""The controller's one exception hierarchy.

Every error the controller reports to a person derives from
`LispControllerError` and says what went wrong, in words, and which input
(`field`) was at fault when there is one. What a kind of error means for
HTTP is decided in one table in the API (`lisp_controller/api/answers.py`),
never where the error is raised: the model, the state and the store know
nothing of HTTP.

Kinds that belong to one layer live with it and derive from the base here:
`ModelError` (model), `StoreError` (store), `ConfigError` (config),
`SwitchError` and `TlsError` (openflow). The kinds below are shared by
several layers.
"""
from __future__ import annotations


class LispControllerError(Exception):
    """Base class: a message for a person and, if one input is at fault,
    its name (``mappings[3].eid``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class NotFound(LispControllerError):
    """The thing a request names does not exist (no such mapping, bridge,
    endpoint, request key)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message, field)


class Conflict(LispControllerError):
    """A change the current state does not allow: the key exists, or is
    owned by the config or an endpoint."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message, field)

"""Field parsers several sections of the config file share: a section that
must be a table, a file that must exist, a number of seconds.

Each raises ``ModelError`` (field, what is wrong) or appends one line to
``problems``, the form every section reports in (``loader.py``).
"""
from __future__ import annotations

from pathlib import Path

from lisp_controller.model import ModelError


def table(data: dict, key: str, problems: list[str], where: str) -> dict:
    """``data[key]`` as a table, or {} (reported) when it is something else."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"{where}: {key}: must be a table ([{key}])")
        return {}
    return value


def parse_seconds(value: object, field: str, low: float = 0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 600:
        raise ModelError(field, f"must be seconds between {low:g} and 600, got {value!r}")
    return float(value)


def existing_file(value: object, field: str, base: Path, problems: list[str], where: str) -> str | None:
    """A file that must exist; relative paths are taken from the config's directory."""
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: {field}: must be a file path, got {value!r}")
        return None
    path = base / value
    if not path.is_file():
        problems.append(f"{where}: {field}: {path}: no such file")
        return None
    return str(path)

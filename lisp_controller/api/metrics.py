"""Counters and gauges, rendered in the Prometheus text format.

Small on purpose: no client library, no registry magic. Gauges that are
facts about the state (mappings, connected bridges) are computed when
scraped, so they can never drift from the truth.
"""
from __future__ import annotations

from typing import Callable

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._values: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, Callable[[], dict[Labels, float]]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._values.setdefault(name, {})

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        values = self._values[name]
        key = tuple(sorted(labels.items()))
        values[key] = values.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = []
        for name, (kind, help_text) in self._help.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            values = self._gauges[name]() if name in self._gauges else self._values[name]
            for labels, value in sorted(values.items()):
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

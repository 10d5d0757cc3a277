"""What a hw-check check returns: statuses, the result record, and how results combine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brain.hwcheck.system import FAIL, PASS, SKIP, WARN

STATUSES = (PASS, WARN, FAIL, SKIP)
_RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}


class Skip(Exception):
    """Nothing to check here (not configured, simulated, no such sensor); says why in a sentence."""


@dataclass(slots=True)
class CheckResult:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "details": _jsonable(self.details),
        }


def result(status: str, summary: str, **details: Any) -> CheckResult:
    """A result whose name the runner fills in."""
    return CheckResult("", status, summary, dict(details))


def worst(*statuses: str) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def count(results: Iterable[CheckResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] += 1
    return counts


def simulated_skip(what: str, key: str) -> Skip:
    """Skip for a part that this config simulates: point at --sim instead."""
    return Skip(
        f"{what} simulated in this config ({key}: sim), so there is no hardware to check; "
        "run `continuon hw-check --sim` to check the simulated robot"
    )

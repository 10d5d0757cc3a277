"""What a run tells: ``metrics.ndjson`` (one JSON record a line) and a progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from cloud_jobs.train.checkpoint import atomic_write

METRICS_FILE = "metrics.ndjson"


class Metrics:
    """``metrics.ndjson``: one JSON object a line, flushed as written (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def trim_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed from (a crash's tail)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if int(rec.get("step", 0)) <= step:
            kept.append(line)
    atomic_write(path, "".join(f"{x}\n" for x in kept))


class Progress:
    """A progress bar on a TTY: tqdm when installed, else a one-line fallback."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.total, self.n = total, initial
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def update(self, postfix: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last < 0.2 and self.n < self.total:
            return
        self._last = now
        frac = self.n / max(1, self.total)
        filled = int(30 * frac)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total} {postfix}   "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")

"""Reading committed episodes.

``open_episode`` only opens *committed* episodes (``episode.json`` present): an
interrupted one has no trustworthy end and must go through
``rlds.recovery.recover`` first.  Steps are streamed record by record, so an
hour-long episode never has to fit in memory.

Any damage in a committed file -- a bad CRC, a truncated record, a malformed
header, a record count different from ``num_steps`` -- raises ``EpisodeError``
naming the file, the record index, its byte offset and what is wrong: a
committed episode is supposed to be intact, so damage is a fact to surface, not
to paper over.  (Recovery is the place where a damaged tail is cut off.)

For a truncated (recovered) episode, the last step on disk was written before
anyone knew it would be the last, so it is yielded with ``is_last=True`` and
``is_terminal=False``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.durable import read_json
from rlds import metadata as schema
from rlds import record, tfrecord
from rlds.errors import EpisodeError
from rlds.layout import EPISODE_FILE, OPEN_FILE, STEPS_FILE, episode_dirs, is_committed
from rlds.types import StepData

_log = logging.getLogger(__name__)


class Episode:
    """A committed episode on disk."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.metadata = meta

    @property
    def episode_id(self) -> str:
        value: str = self.metadata["episode_id"]
        return value

    @property
    def num_steps(self) -> int:
        value: int = self.metadata["num_steps"]
        return value

    @property
    def truncated(self) -> bool:
        value: bool = self.metadata["truncated"]
        return value

    @property
    def status(self) -> str:
        value: str = self.metadata["status"]
        return value

    @property
    def steps_path(self) -> Path:
        return self.path / STEPS_FILE

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return f"Episode({self.episode_id}, steps={self.num_steps}, status={self.status})"

    def steps(self, decode_images: bool = True) -> Iterator[StepData]:
        """Every step in order; ``EpisodeError`` on any damage (see module docstring)."""
        where = self.steps_path
        try:
            f = open(where, "rb")  # noqa: SIM115 - closed by the `with f:` below
        except OSError as e:
            raise EpisodeError(f"{where}: cannot open: {e.strerror or e}") from None
        with f:
            held: StepData | None = None
            count = 0
            for item in tfrecord.scan(f):
                if isinstance(item, tfrecord.FrameError):
                    raise EpisodeError(item.describe(where))
                at = f"{where}: record {item.index} at byte offset {item.offset}"
                if item.index >= self.num_steps:
                    raise EpisodeError(f"{at}: extra record beyond num_steps={self.num_steps}")
                try:
                    step = record.decode(item.data, decode_images=decode_images)
                except record.RecordError as e:
                    raise EpisodeError(f"{at}: {e}") from None
                if step.index != item.index:
                    raise EpisodeError(f"{at}: step index {step.index} != record index")
                count += 1
                if held is not None:
                    yield held
                held = step
            if count != self.num_steps:
                raise EpisodeError(
                    f"{where}: file ends after {count} records but num_steps is {self.num_steps}"
                )
            if held is not None:
                if self.truncated:
                    held.is_last = True
                    held.is_terminal = False
                yield held


def open_episode(path: Path) -> Episode:
    """Open a committed episode directory; ``EpisodeError`` if it is not one."""
    path = Path(path)
    meta_path = path / EPISODE_FILE
    if not meta_path.is_file():
        if (path / OPEN_FILE).exists() or (path / STEPS_FILE).exists():
            raise EpisodeError(
                f"{path}: episode is in progress or interrupted (no {EPISODE_FILE}); "
                "run rlds.recovery.recover() on its root"
            )
        raise EpisodeError(f"{path}: not an episode directory (no {EPISODE_FILE})")
    try:
        meta = read_json(meta_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EpisodeError(f"{meta_path}: unreadable metadata: {e}") from None
    problems = schema.check_committed(meta, str(meta_path))
    if problems:
        raise EpisodeError("; ".join(problems))
    return Episode(path, meta)


def list_episodes(root: Path) -> list[Episode]:
    """Committed episodes under ``root``, oldest first.

    An episode whose metadata cannot be read is skipped with a warning (one bad
    directory must not hide all the others); ``rlds.validate`` reports it.
    """
    out = []
    for d in episode_dirs(Path(root)):
        if not is_committed(d):
            continue
        try:
            out.append(open_episode(d))
        except EpisodeError as e:
            _log.warning("skipping episode: %s", e)
    out.sort(key=lambda e: (e.metadata["start_utc"], e.episode_id))
    return out


def list_interrupted(root: Path) -> list[Path]:
    """Episode directories without ``episode.json`` (in progress, or left by a crash)."""
    return [d for d in episode_dirs(Path(root)) if not is_committed(d)]

"""Episode housekeeping the network may ask for: list, delete, export.

Lives on the brain side so the edge agent never touches episode files; ids are
validated against what is really on disk, so a request cannot name a path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from brain import __version__
from brain.config import Config
from brain.interface import CommandError, NotFound

EXPORT_FORMATS = ("rlds", "lerobot")


class EpisodeStore:
    def __init__(self, config: Config, recording_id: Any = None) -> None:
        self._cfg = config
        self._recording_id = recording_id or (lambda: None)

    @property
    def root(self) -> Path:
        return self._cfg.episodes_dir()

    def list(self) -> list[dict[str, Any]]:
        from rlds.reader import list_episodes, list_interrupted
        from rlds.storage import read_exports

        root = self.root
        if not root.exists():
            return []
        rows: list[dict[str, Any]] = []
        for e in list_episodes(root):
            m = e.metadata
            rows.append(
                {
                    "episode_id": e.episode_id,
                    "status": e.status,
                    "num_steps": e.num_steps,
                    "truncated": e.truncated,
                    "mode": m.get("mode"),
                    "start_utc": m.get("start_utc"),
                    "duration_s": m.get("duration_s"),
                    "model_version": m.get("model_version"),
                    "tags": m.get("tags", []),
                    "exports": [x.get("format") for x in read_exports(e.path)],
                }
            )
        for p in list_interrupted(root):
            rows.append({"episode_id": p.name, "status": "interrupted"})
        return rows

    def _path(self, episode_id: str) -> Path:
        if not isinstance(episode_id, str) or not episode_id or "/" in episode_id:
            raise NotFound(f"no episode {episode_id!r}")
        from rlds.layout import episode_dirs

        for d in episode_dirs(self.root) if self.root.exists() else []:
            if d.name == episode_id:
                return d
        raise NotFound(f"no episode {episode_id!r}")

    def delete(self, episode_id: str) -> dict[str, Any]:
        from rlds.errors import EpisodeError
        from rlds.storage import delete_episode

        path = self._path(episode_id)
        if episode_id == self._recording_id():
            raise CommandError(f"episode {episode_id} is being recorded; stop recording first")
        try:
            delete_episode(path)
        except EpisodeError as exc:
            raise CommandError(str(exc)) from None
        return {"deleted": episode_id}

    async def export(self, options: dict[str, Any]) -> dict[str, Any]:
        fmt = options.get("format", "rlds")
        if fmt not in EXPORT_FORMATS:
            raise CommandError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
        seed = options.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise CommandError("seed must be an integer")
        out = self._cfg.state_dir() / "exports" / fmt
        return await asyncio.to_thread(self._export, fmt, out, seed, options.get("split"))

    def _export(self, fmt: str, out: Path, seed: int, split: str | None) -> dict[str, Any]:
        from rlds.datasets.anonymize import load_or_create_salt
        from rlds.datasets.run import ExportError, export_dataset
        from rlds.datasets.splits import parse_fractions
        from rlds.reader import list_episodes

        try:
            fractions = parse_fractions(split or "0.8,0.1,0.1")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        salt = load_or_create_salt(self._cfg.state_dir() / "export.salt")
        root = self.root
        try:
            res = export_dataset(
                list_episodes(root) if root.exists() else [],
                out,
                fmt=fmt,
                salt=salt,
                fractions=fractions,
                seed=seed,
                software_version=__version__,
            )
        except ExportError as exc:
            raise CommandError(f"export failed: {exc}") from None
        return {
            "format": res.format,
            "out_dir": str(res.out_dir),
            "episodes": res.episodes,
            "skipped": res.skipped,
            "splits": res.splits,
            "up_to_date": res.up_to_date,
            "files": res.files,
        }

"""Checking an episode on disk, reporting every problem instead of raising.

Used by the CLI (``continuon rlds validate``) and by export before anything is
published.  It reads the whole episode: metadata schema, every record's framing
and CRCs, every header, the RLDS flag structure, index and timestamp order,
constant action length, that every image decodes, that depth is uint16, and
that the step file's sha256 and size match the metadata.  Corrupt and truncated
files produce problems that name the record index and byte offset; nothing here
lets an exception escape as a traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.digest import sha256_file
from common.durable import read_json
from rlds import images, record, tfrecord
from rlds import metadata as schema
from rlds.layout import EPISODE_FILE, OPEN_FILE, STEPS_FILE

_MAX_PROBLEMS = 50  # one bad timestamp in a 50 Hz hour would otherwise give 180,000 lines


@dataclass(slots=True)
class ValidationReport:
    path: Path
    ok: bool
    problems: list[str]
    num_steps: int  # valid records found in the step file
    episode_id: str | None = None
    status: str | None = None  # complete | recovered | interrupted | None (no metadata)
    truncated: bool | None = None
    file_size: int = 0
    images_checked: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        head = "OK" if self.ok else f"INVALID ({len(self.problems)} problems)"
        lines = [
            f"{self.path}: {head}",
            f"  episode {self.episode_id or '?'}, status {self.status or '?'}"
            + (", truncated" if self.truncated else "")
            + f", {self.num_steps} steps, {self.file_size} bytes,"
            f" {self.images_checked} images decoded",
        ]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class _Problems(list[str]):
    """A list of problems that stops growing (with a note) after a limit."""

    def add(self, msg: str) -> None:
        if len(self) < _MAX_PROBLEMS:
            self.append(msg)
        elif len(self) == _MAX_PROBLEMS:
            self.append("... more problems not shown")


def validate_episode(path: Path) -> ValidationReport:
    """Validate one episode directory (committed or interrupted)."""
    path = Path(path)
    report = ValidationReport(path=path, ok=False, problems=[], num_steps=0)
    problems = _Problems()
    try:
        _validate(path, report, problems)
    except Exception as e:  # a validator must report, never crash
        problems.add(f"internal error while validating: {type(e).__name__}: {e}")
    report.problems = list(problems)
    report.ok = not report.problems
    return report


def _load_meta(path: Path, report: ValidationReport, problems: _Problems) -> dict[str, Any] | None:
    meta_path = path / EPISODE_FILE
    if meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.add(f"{meta_path}: unreadable: {e}")
            return None
        for p in schema.check_committed(meta, str(meta_path)):
            problems.add(p)
        if isinstance(meta, dict):
            report.status = meta.get("status")
            report.truncated = meta.get("truncated")
            report.episode_id = meta.get("episode_id")
            return meta
        return None
    open_path = path / OPEN_FILE
    report.status = "interrupted"
    if not open_path.is_file():
        problems.add(f"{path}: no {EPISODE_FILE} or {OPEN_FILE}: not an episode directory")
        return None
    problems.add(
        f"{path}: not committed (interrupted: {OPEN_FILE} without {EPISODE_FILE}); "
        "run rlds.recovery.recover()"
    )
    try:
        start = read_json(open_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.add(f"{open_path}: unreadable: {e}")
        return None
    for p in schema.check_start(start, str(open_path)):
        problems.add(p)
    if isinstance(start, dict):
        report.episode_id = start.get("episode_id")
    return None


def _validate(path: Path, report: ValidationReport, problems: _Problems) -> None:
    if not path.is_dir():
        problems.add(f"{path}: not a directory")
        return
    meta = _load_meta(path, report, problems)
    committed = meta is not None and not schema.check_committed(meta)
    steps_path = path / STEPS_FILE
    try:
        f = open(steps_path, "rb")  # noqa: SIM115 - closed by the `with f:` below
    except OSError as e:
        problems.add(f"{steps_path}: cannot open: {e.strerror or e}")
        return
    depth_scale_missing_reported = False
    with f:
        report.file_size = os.fstat(f.fileno()).st_size
        action_len: int | None = None
        prev_t: float | None = None
        prev_ts: dict[str, float] = {}
        last_flags: tuple[int, bool, bool] | None = None
        for item in tfrecord.scan(f):
            if isinstance(item, tfrecord.FrameError):
                problems.add(item.describe(steps_path))
                break
            at = f"{steps_path}: record {item.index} at byte offset {item.offset}"
            report.num_steps += 1
            try:
                header, section = record.parse_header(item.data)
            except record.RecordError as e:
                problems.add(f"{at}: {e}")
                continue
            i = header["index"]
            if i != item.index:
                problems.add(f"{at}: step index {i}, expected {item.index}")
            if header["is_first"] != (item.index == 0):
                problems.add(f"{at}: is_first={header['is_first']} on step {item.index}")
            if last_flags is not None and last_flags[1]:
                problems.add(f"{at}: step follows a step marked is_last")
            if header["is_terminal"] and not header["is_last"]:
                problems.add(f"{at}: is_terminal without is_last")
            last_flags = (item.index, header["is_last"], header["is_terminal"])
            n = len(header["action"])
            if action_len is None:
                action_len = n
            elif n != action_len:
                problems.add(f"{at}: action has {n} values, first step had {action_len}")
            t = _float(header["t"])
            if t is None:
                problems.add(f"{at}: t is not a number")
            else:
                if prev_t is not None and t < prev_t:
                    problems.add(f"{at}: t={t!r} goes backwards from {prev_t!r}")
                prev_t = t
            for name, v in header["timestamps"].items():
                tv = _float(v)
                if tv is None:
                    problems.add(f"{at}: timestamps[{name!r}] is not a number")
                    continue
                if name in prev_ts and tv < prev_ts[name]:
                    problems.add(
                        f"{at}: timestamps[{name!r}]={tv!r} goes backwards from {prev_ts[name]!r}"
                    )
                prev_ts[name] = tv
            for entry in header["blobs"]:
                raw = bytes(section[entry["offset"] : entry["offset"] + entry["length"]])
                try:
                    arr = record.decode_blob(entry, raw)
                except record.RecordError as e:
                    problems.add(f"{at}: {e}")
                    continue
                if entry["encoding"] in (images.JPEG, images.PNG16):
                    report.images_checked += 1
                if entry["name"] == "depth" and arr.dtype.name != "uint16":
                    problems.add(f"{at}: depth has dtype {arr.dtype}, expected uint16")
                if (
                    entry["name"] == "depth"
                    and meta is not None
                    and "depth_scale" not in meta
                    and not depth_scale_missing_reported
                ):
                    problems.add(f"{at}: depth observation but no depth_scale in metadata")
                    depth_scale_missing_reported = True
        if report.num_steps and last_flags is not None and not last_flags[1]:
            truncated = meta is not None and meta.get("truncated") is True
            if not truncated:
                problems.add(f"{steps_path}: last step (record {last_flags[0]}) is not is_last")
    if report.num_steps == 0:
        problems.add(f"{steps_path}: no valid steps")
    if committed:
        assert meta is not None
        if meta["num_steps"] != report.num_steps:
            problems.add(
                f"{steps_path}: {report.num_steps} valid records, metadata says {meta['num_steps']}"
            )
        if meta["file_size"] != report.file_size:
            problems.add(
                f"{steps_path}: size {report.file_size} bytes, metadata says {meta['file_size']}"
            )
        digest = sha256_file(steps_path)
        if digest != meta["steps_sha256"]:
            problems.add(f"{steps_path}: sha256 {digest} does not match metadata steps_sha256")


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)

"""Writing one episode as it happens, crash-safe.

Life of an episode directory ``<root>/<episode_id>/``:

1. ``steps.tfrecord`` is created and locked, then ``open.json`` (start metadata)
   is written atomically.  From here on a crash leaves an *interrupted* episode
   that ``rlds.recovery.recover`` turns into a truncated one.
2. Every ``append`` encodes the step (JPEG/PNG/raw) and writes the *previous* one
   as one TFRecord-framed record.  One step is held back because RLDS's
   ``is_last`` must be in the record and only the next ``append`` (or ``close``)
   tells whether a step is the last.  The file is fsynced every
   ``fsync_interval_s``, bounding what a power cut can take to about that much
   recording (plus the held step).
3. ``close`` writes the held step with ``is_last`` (and ``is_terminal``), fsyncs,
   and commits ``episode.json`` atomically (temp, fsync, rename, fsync dir), then
   removes ``open.json``.  The rename is the commit point: before it the episode
   is interrupted, after it it is complete.

A full disk must not cost the episode: a write error cuts the partial record off
and stops the writer, and ``close`` commits what is on disk as truncated.  The
commit itself needs a little space (a new ``episode.json``), so ``reserve_bytes``
of zeros (``commit.reserve``) are written when the episode starts and removed
just before the commit.  An episode that cannot even start (no room for its
files) removes its directory again, so a full disk does not fill up with empty
episodes.  Files are created 0644 (subject to the umask), directories 0755.

Encodings are cached per observation name: when a 30 fps camera frame is shared
by consecutive 50 Hz ticks, the same array object (or the same
``extra["frame_seq"]`` for "image", ``extra["<name>_seq"]`` for other names) is
encoded once.  A cached array is referenced weakly, and only the last one per
name, so the writer never retains per-step arrays.  Arrays must not be mutated in
place after being passed in (camera drivers hand out fresh arrays per frame).

``append`` does blocking file I/O (and an fsync once per interval, which takes
milliseconds to tens of milliseconds on an SD card); call it from a recorder
thread, not from the control loop's thread.  A writer is used by one thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.durable import fsync_dir, write_json
from rlds import images, jsonvalues, metadata, record, tfrecord
from rlds.crc import IMPLEMENTATION as CRC_IMPLEMENTATION
from rlds.errors import EpisodeError
from rlds.layout import (
    EPISODE_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    OPEN_FILE,
    RESERVE_FILE,
    STEPS_FILE,
    TMP_SUFFIX,
    new_episode_id,
    utc_iso,
)
from rlds.locks import try_lock
from rlds.timings import Window
from rlds.types import EpisodeInfo, StepInput

# Timing percentiles cover the most recent samples: ~20 s of steps at 50 Hz, and
# for fsyncs (one a second) the last ~17 minutes.
STATS_WINDOW = 1024
# Room for the commit metadata (a few KiB) and a directory block, on any block size.
RESERVE_BYTES = 64 * 1024
FILE_MODE = 0o644
DIR_MODE = 0o755


class _CacheEntry:
    __slots__ = ("blob", "dtype", "ref", "seq", "shape")

    def __init__(self, arr: np.ndarray | None, seq: Any, blob: record.Blob) -> None:
        self.ref = weakref.ref(arr) if arr is not None else None
        self.seq = seq
        self.shape = None if arr is None else arr.shape
        self.dtype = None if arr is None else arr.dtype
        self.blob = blob

    def matches(self, arr: np.ndarray | None, seq: Any) -> bool:
        if arr is not None and self.ref is not None and self.ref() is arr:
            return True
        return (
            seq is not None
            and seq == self.seq
            and arr is not None
            and arr.shape == self.shape
            and arr.dtype == self.dtype
        )


class EpisodeWriter:
    """Records one episode under ``root``; see the module docstring for the protocol."""

    def __init__(
        self,
        root: Path,
        metadata: dict[str, Any],
        *,
        jpeg_quality: int = 90,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        png_compression: int = 1,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        if not isinstance(metadata, dict):
            raise EpisodeError(f"metadata must be a dict, got {type(metadata).__name__}")
        clash = _reserved_in(metadata)
        if clash:
            raise EpisodeError(f"metadata uses reserved keys {clash}; rename them")
        if not 1 <= int(jpeg_quality) <= 100:
            raise EpisodeError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        try:
            user_meta = jsonvalues.to_jsonable(metadata)
            # strict JSON: metadata files are read by other tools
            json.dumps(user_meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise EpisodeError(f"metadata is not JSON-serializable: {e}") from None

        self.root = Path(root)
        self.jpeg_quality = int(jpeg_quality)
        self.png_compression = int(png_compression)
        self.fsync_interval_s = float(fsync_interval_s)
        self._clock = clock

        self.root.mkdir(parents=True, exist_ok=True)
        wall = time.time()
        for _ in range(16):
            self.episode_id = new_episode_id(wall)
            self.path = self.root / self.episode_id
            try:
                self.path.mkdir(mode=DIR_MODE)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 16 random 32-bit collisions
            raise EpisodeError(f"could not create a unique episode directory under {self.root}")

        self._steps_path = self.path / STEPS_FILE
        self._fd = -1
        self._reserve_bytes = max(0, int(reserve_bytes))
        start_meta = {
            **user_meta,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "episode_id": self.episode_id,
            "start_utc": utc_iso(wall),
            "start_wall": wall,
            "writer": {
                "jpeg_quality": self.jpeg_quality,
                "png_compression": self.png_compression,
                "fsync_interval_s": self.fsync_interval_s,
                "crc32c": CRC_IMPLEMENTATION,
            },
        }
        try:
            self._create_files(start_meta)
        except BaseException:
            self._undo_create()
            raise
        self._start_meta: dict[str, Any] = start_meta

        self._sha = hashlib.sha256()
        self._size = 0
        self._steps = 0
        self._pending: tuple[dict[str, Any], list[record.Blob]] | None = None
        self._action_len: int | None = None
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._written_last_t: float | None = None
        self._cache: dict[str, _CacheEntry] = {}
        self._closed = False
        self._failed: str | None = None
        self._error: OSError | None = None
        self._last_fsync = clock()
        self._fsync_ms = Window(STATS_WINDOW)
        self._encode_ms = Window(STATS_WINDOW)
        self._write_ms = Window(STATS_WINDOW)
        self._encodes = 0
        self._reused = 0

    def _create_files(self, start_meta: dict[str, Any]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        self._fd = os.open(self._steps_path, flags, FILE_MODE)
        if not try_lock(self._fd):  # pragma: no cover - the file was just created by us
            raise EpisodeError(f"{self._steps_path} is locked by another process")
        if self._reserve_bytes:
            _write_zeros(self.path / RESERVE_FILE, self._reserve_bytes)
        write_json(self.path / OPEN_FILE, start_meta, tmp_name=OPEN_FILE + TMP_SUFFIX)
        fsync_dir(self.root)

    def _undo_create(self) -> None:
        """Remove what a failed start created: an episode that never began holds no data."""
        self._release()
        for name in (OPEN_FILE, OPEN_FILE + TMP_SUFFIX, RESERVE_FILE, STEPS_FILE):
            with contextlib.suppress(OSError):
                os.unlink(self.path / name)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
        self._closed = True

    # ------------------------------------------------------------------ appending

    def append(self, step: StepInput) -> None:
        """Encode ``step`` and write the step held back before it."""
        if self._closed:
            raise EpisodeError(f"episode {self.episode_id} is closed; append() after close/abort")
        if self._failed:
            raise EpisodeError(
                f"episode {self.episode_id} stopped after a write error: {self._failed}"
            )
        header, blobs = self._prepare(step)
        if self._pending is not None:
            self._write(*self._pending, is_last=False, is_terminal=False)
        self._pending = (header, blobs)

    def _prepare(self, step: StepInput) -> tuple[dict[str, Any], list[record.Blob]]:
        if not isinstance(step, StepInput):
            raise EpisodeError(f"append() takes a StepInput, got {type(step).__name__}")
        try:
            t = float(step.t)
        except (TypeError, ValueError):
            raise EpisodeError(f"step t must be a number, got {step.t!r}") from None
        if not math.isfinite(t):
            raise EpisodeError(f"step t must be finite, got {t}")
        if self._last_t is not None and t < self._last_t:
            raise EpisodeError(f"step t went backwards: {t} after {self._last_t}")
        try:
            action = np.asarray(step.action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise EpisodeError(f"action is not a float vector: {e}") from None
        if action.ndim > 1:
            raise EpisodeError(f"action must be a 1-D vector, got shape {action.shape}")
        action = action.reshape(-1)
        if self._action_len is None:
            self._action_len = action.size
        elif action.size != self._action_len:
            raise EpisodeError(
                f"action has {action.size} values but the episode's first step "
                f"had {self._action_len}"
            )
        if not isinstance(step.observation, dict) or not isinstance(step.timestamps, dict):
            raise EpisodeError("observation and timestamps must be dicts")
        if not isinstance(step.extra, dict):
            raise EpisodeError(f"extra must be a dict, got {type(step.extra).__name__}")
        try:
            timestamps = {str(k): float(v) for k, v in step.timestamps.items()}
            header = {
                "t": t,
                "action": [jsonvalues.encode_float(x) for x in action.tolist()],
                "reward": jsonvalues.encode_float(float(step.reward)),
                "discount": jsonvalues.encode_float(float(step.discount)),
                "timestamps": {k: jsonvalues.encode_float(v) for k, v in timestamps.items()},
                "extra": jsonvalues.to_jsonable(step.extra),
            }
        except (TypeError, ValueError) as e:
            raise EpisodeError(f"step is not serializable: {e}") from None

        t0 = time.perf_counter()
        blobs = self._encode_observation(step)
        self._encode_ms.add((time.perf_counter() - t0) * 1000.0)
        self._last_t = t
        return header, blobs

    def _encode_observation(self, step: StepInput) -> list[record.Blob]:
        encoded = step.encoded or {}
        unknown = set(encoded) - set(step.observation)
        blobs: list[record.Blob] = []
        for name in sorted(set(step.observation) | set(encoded)):
            if not isinstance(name, str):
                raise EpisodeError(f"observation names must be str, got {name!r}")
            arr = step.observation.get(name)
            if arr is not None and not isinstance(arr, np.ndarray):
                arr = np.asarray(arr)
            seq = step.extra.get("frame_seq" if name == "image" else f"{name}_seq")
            cached = self._cache.get(name)
            if name not in unknown and cached is not None and cached.matches(arr, seq):
                blobs.append(cached.blob)
                self._reused += 1
                continue
            blob = self._encode_one(name, arr, encoded.get(name))
            self._encodes += 1
            blobs.append(blob)
            if blob.encoding != images.RAW:
                self._cache[name] = _CacheEntry(arr, seq, blob)
        return blobs

    def _encode_one(self, name: str, arr: np.ndarray | None, pre: bytes | None) -> record.Blob:
        if pre is not None:
            enc = images.sniff(pre)
            if enc is None:
                raise EpisodeError(f"encoded[{name!r}] is neither JPEG nor PNG")
            if arr is not None and images.choose_encoding(arr) != enc:
                raise EpisodeError(
                    f"encoded[{name!r}] is {enc} but the array ({arr.dtype}, {arr.shape}) "
                    f"would be stored as {images.choose_encoding(arr)}"
                )
            dtype = "uint8" if enc == images.JPEG else "uint16"
            shape = None if arr is None else list(arr.shape)
            return record.Blob(name, bytes(pre), enc, dtype, shape)
        assert arr is not None
        enc = images.choose_encoding(arr)
        try:
            if enc == images.JPEG:
                data = images.encode_jpeg(arr, self.jpeg_quality)
                return record.Blob(name, data, enc, "uint8", list(arr.shape))
            if enc == images.PNG16:
                data = images.encode_png16(arr, self.png_compression)
                return record.Blob(name, data, enc, "uint16", list(arr.shape))
            data, dtype = images.encode_raw(arr)
        except ValueError as e:
            raise EpisodeError(f"observation {name!r}: {e}") from None
        return record.Blob(name, data, enc, dtype, list(arr.shape))

    def _write(
        self, header: dict[str, Any], blobs: list[record.Blob], *, is_last: bool, is_terminal: bool
    ) -> None:
        full = {
            "index": self._steps,
            "t": header["t"],
            "is_first": self._steps == 0,
            "is_last": is_last,
            "is_terminal": is_terminal,
            **{k: v for k, v in header.items() if k != "t"},
        }
        data = tfrecord.encode_record(record.build(full, blobs))
        t0 = time.perf_counter()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            self._error = e
            self._failed = f"{e.strerror or e} while writing step {self._steps}"
            self._pending = None
            # Cut the partial record off so the file stays a clean prefix of valid records.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise EpisodeError(
                f"{self._steps_path}: write failed ({self._failed}); close() commits the "
                f"{self._steps} steps written so far as truncated"
            ) from e
        self._write_ms.add((time.perf_counter() - t0) * 1000.0)
        self._sha.update(data)
        self._size += len(data)
        self._steps += 1
        if self._first_t is None:
            self._first_t = header["t"]
        self._written_last_t = header["t"]
        if self._clock() - self._last_fsync >= self.fsync_interval_s:
            try:
                self._fsync()
            except OSError as e:
                self._error = e
                # The kernel may have dropped the dirty pages: stop here; close() retries
                # the fsync before committing, and leaves the episode to recovery if it fails.
                self._failed = f"{e.strerror or e} while syncing after step {self._steps - 1}"
                raise EpisodeError(f"{self._steps_path}: fsync failed ({self._failed})") from e

    def _fsync(self) -> None:
        t0 = time.perf_counter()
        os.fsync(self._fd)
        self._fsync_ms.add((time.perf_counter() - t0) * 1000.0)
        self._last_fsync = self._clock()

    # ------------------------------------------------------------------ ending

    def close(
        self, *, terminal: bool = False, extra_metadata: dict[str, Any] | None = None
    ) -> EpisodeInfo | None:
        """Write the held step as the last one, fsync and commit ``episode.json``.

        ``terminal`` marks the last step ``is_terminal`` (the task really ended,
        as opposed to the recording being stopped).  Returns None, and removes the
        directory, if no step was recorded.
        """
        if self._closed:
            raise EpisodeError(f"episode {self.episode_id} is already closed")
        extra_metadata = dict(extra_metadata or {})
        clash = _reserved_in(extra_metadata)
        if clash:
            raise EpisodeError(f"extra_metadata uses reserved keys {clash}; rename them")
        try:
            extra_json = jsonvalues.to_jsonable(extra_metadata)
            json.dumps(extra_json, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise EpisodeError(f"extra_metadata is not JSON-serializable: {e}") from None
        try:
            if self._pending is not None and not self._failed:
                pending, self._pending = self._pending, None
                self._write(*pending, is_last=True, is_terminal=bool(terminal))
        except EpisodeError:
            pass  # _failed is set; commit what is on disk, as truncated
        self._closed = True
        try:
            if self._steps == 0:
                self._remove_empty()
                return None
            meta = self._commit_meta(bool(terminal), extra_json)
            try:
                self._fsync()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / RESERVE_FILE)  # its space is for episode.json
                write_json(self.path / EPISODE_FILE, meta, tmp_name=EPISODE_FILE + TMP_SUFFIX)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / OPEN_FILE)
                fsync_dir(self.path)
            except OSError as e:
                raise EpisodeError(
                    f"{self.path}: commit failed ({e}); the episode is left interrupted "
                    "for rlds.recovery.recover()"
                ) from e
        finally:
            self._release()
        return EpisodeInfo(
            episode_id=self.episode_id,
            path=self.path,
            num_steps=self._steps,
            duration_s=meta["duration_s"],
            file_size=self._size,
            steps_sha256=meta["steps_sha256"],
            terminal=meta["terminal"],
            metadata=meta,
        )

    def _commit_meta(self, terminal: bool, extra_json: dict[str, Any]) -> dict[str, Any]:
        assert self._first_t is not None and self._written_last_t is not None
        meta = {
            **self._start_meta,
            **extra_json,
            "status": metadata.STATUS_COMPLETE,
            "truncated": False,
            "terminal": terminal and not self._failed,
            "num_steps": self._steps,
            "start_t": self._first_t,
            "end_t": self._written_last_t,
            "duration_s": self._written_last_t - self._first_t,
            "end_utc": utc_iso(time.time()),
            "file_size": self._size,
            "steps_sha256": self._sha.hexdigest(),
        }
        if self._failed:
            meta["status"] = metadata.STATUS_RECOVERED
            meta["truncated"] = True
            meta["recovery"] = {"reason": f"write error: {self._failed}", "bytes_dropped": 0}
        return meta

    def _remove_empty(self) -> None:
        for name in (STEPS_FILE, RESERVE_FILE, OPEN_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / name)
        self._release()
        try:
            os.rmdir(self.path)
        except OSError:  # something else was put there; leave it for a person
            return
        fsync_dir(self.root)

    def abort(self, reason: str) -> None:
        """Stop without committing: the episode stays *interrupted* for ``recover()``.

        Nothing is deleted.  The held step is written (it is valid data) and
        fsynced, and ``reason`` is added to ``open.json`` so recovery can report it.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending is not None and not self._failed:
                pending, self._pending = self._pending, None
                with contextlib.suppress(EpisodeError):
                    self._write(*pending, is_last=False, is_terminal=False)
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            with contextlib.suppress(OSError):
                write_json(
                    self.path / OPEN_FILE,
                    {**self._start_meta, "abort_reason": str(reason)},
                    tmp_name=OPEN_FILE + TMP_SUFFIX,
                )
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc is None:
            self.close()
        else:
            self.abort(f"{exc_type.__name__}: {exc}")

    def __del__(self) -> None:  # a forgotten writer must not leak its fd and lock
        with contextlib.suppress(Exception):
            if getattr(self, "_fd", -1) >= 0:
                os.close(self._fd)

    # ------------------------------------------------------------------ introspection

    @property
    def num_steps(self) -> int:
        """Steps on disk plus the one held back."""
        return self._steps + (self._pending is not None)

    @property
    def steps_written(self) -> int:
        """Steps that reached the step file (not counting the one held back)."""
        return self._steps

    @property
    def failed(self) -> str | None:
        """Why the writer stopped (a write or fsync error), or None."""
        return self._failed

    @property
    def error(self) -> OSError | None:
        """The OSError that stopped the writer, or None."""
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Counters, and timing percentiles (ms) over the last ``STATS_WINDOW`` samples."""
        return {
            "episode_id": self.episode_id,
            "steps": self.num_steps,
            "steps_written": self._steps,
            "bytes": self._size,
            "fsyncs": self._fsync_ms.count,
            "fsync_ms_p50": self._fsync_ms.percentile(50),
            "fsync_ms_p99": self._fsync_ms.percentile(99),
            "fsync_ms_max": self._fsync_ms.max,
            "encode_ms_p50": self._encode_ms.percentile(50),
            "encode_ms_p99": self._encode_ms.percentile(99),
            "encode_ms_max": self._encode_ms.max,
            "write_ms_p99": self._write_ms.percentile(99),
            "encodes": self._encodes,
            "encodes_reused": self._reused,
            "failed": self._failed,
        }


def _write_zeros(path: Path, size: int) -> None:
    """Allocate ``size`` bytes for real (a sparse file would reserve nothing)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(bytes(size))
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _reserved_in(d: dict[str, Any]) -> list[str]:
    return metadata.reserved_in(d)

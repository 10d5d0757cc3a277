"""Durable file writes: after a crash a file is the old version or the new one, never neither.

Every write of state, metadata, checkpoints, keys and reports in the tree goes through here
(ruff bans ``os.replace``/``os.rename``/``shutil.move`` elsewhere; docs/durability.md):

* :func:`replace_file` / :func:`replacing` / :func:`write_json`: a file replaced whole. The
  data goes to a temporary file in the same directory, is fsynced, renamed over the target
  (rename(2) is atomic), and the directory is fsynced (the rename itself is only on disk once
  the directory entry is). A failure removes the temporary file and leaves the target as it was.
* :func:`replace_dir` / :func:`replacing_dir`: a directory built beside the target, fsynced
  file by file, then swapped in with one ``renameat2(RENAME_EXCHANGE)``, so the target is the
  complete old tree or the complete new one at every instant; the old tree is removed after.
* :func:`append`: bytes appended and fsynced. A crash during it leaves the old content followed
  by a prefix of the new bytes, which is why its readers frame records (a CRC, a newline).
* :func:`move`: an existing file or directory renamed (a fsynced download into place, a
  directory into a trash folder), with the directories fsynced.

Nothing here imports anything of ours: it is the bottom of the dependency graph.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

StrPath = str | os.PathLike[str]
TMP_SUFFIX = ".tmp"

# renameat2(2) flag: swap two paths atomically (Linux >= 3.15; ext4, xfs, btrfs, tmpfs).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# What renameat2 answers where the kernel, libc or filesystem cannot exchange.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def fsync_dir(path: StrPath) -> None:
    """Make renames, creations and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_tmp(path: Path, mode: int, tmp_name: str | None) -> tuple[int, Path]:
    if tmp_name is None:
        # Unique, so two writers never share a temporary; hidden and ending in ".tmp", so
        # a cleanup after a crash finds it (``.<name>.*.tmp``).
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        tmp = Path(name)
    else:
        # A fixed name, for a caller whose recovery finishes an interrupted replace
        # (rlds commits episode.json through episode.json.tmp).
        tmp = path.with_name(tmp_name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # Before any byte is written: a private file (0600) is never readable by others.
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, tmp


def _fsync_file(path: Path) -> None:
    """Flush a file someone else wrote (and closed) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(
    path: StrPath, data: bytes, *, mode: int = 0o644, tmp_name: str | None = None
) -> None:
    """Replace ``path`` with ``data``: the old or the new content after a crash, never half.

    ``mode`` is set on the temporary file before it is written. ``tmp_name`` (a name in the
    same directory) replaces the default unique temporary name.
    """
    path = Path(path)
    fd, tmp = _open_tmp(path, mode, tmp_name)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def replacing(path: StrPath, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path for a writer that needs one (torch.save, onnx.save, tarfile).

    The path ends in ``.tmp``: hand a writer that appends a missing extension (np.save) an
    open file instead.

    When the block ends without an exception the temporary file is fsynced and renamed over
    ``path`` (as :func:`replace_file` does); otherwise it is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = _open_tmp(path, mode, None)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def dumps_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> bytes:
    """Strict JSON (no NaN/Infinity, which other parsers reject), newline-terminated."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_json(
    path: StrPath,
    obj: Any,
    *,
    mode: int = 0o644,
    indent: int | None = 2,
    sort_keys: bool = True,
    tmp_name: str | None = None,
) -> None:
    """:func:`replace_file` with :func:`dumps_json` of ``obj``."""
    data = dumps_json(obj, indent=indent, sort_keys=sort_keys)
    replace_file(path, data, mode=mode, tmp_name=tmp_name)


def read_json(path: StrPath) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append(path: StrPath, data: bytes, *, mode: int = 0o644) -> None:
    """Append ``data`` to ``path`` (created if missing) and fsync before returning."""
    path = Path(path)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def move(src: StrPath, dst: StrPath) -> None:
    """Rename ``src`` to ``dst`` (same filesystem; replaces a file or an empty directory).

    For something already complete: a checked download, a directory going to a trash folder.
    A regular file is fsynced first (cheap if it already was), and both directories after,
    so the move survives a power cut. A directory's contents are the caller's to fsync.
    """
    src, dst = Path(src), Path(dst)
    if src.is_file() and not src.is_symlink():
        _fsync_file(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_dir(src.parent)


# ------------------------------------------------------------------------- directories


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(dirpath)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where this system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _old_name(target: Path) -> str:
    return f".{target.name}.old-"


def recover_dir(target: StrPath) -> None:
    """Finish a directory swap that a crash interrupted (only the two-rename fallback can be).

    Where the filesystem cannot exchange two directories, :func:`replace_dir` renames the old
    tree to ``.<name>.old-XXXX`` and the new one into place: a crash in between leaves no
    target. Then the old tree is put back; otherwise leftovers of old trees are removed.
    """
    target = Path(target)
    olds = sorted(target.parent.glob(_old_name(target) + "*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return
    if not target.exists():
        os.replace(olds.pop(), target)
        fsync_dir(target.parent)
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)


def replace_dir(built: StrPath, target: StrPath) -> None:
    """Put the directory ``built`` (a sibling of ``target``) in ``target``'s place.

    Every file of ``built`` is fsynced first. Where ``target`` exists the two are exchanged
    with ``renameat2(RENAME_EXCHANGE)``, atomic, and the old tree (now at ``built``) is
    removed; after a crash ``target`` is the old tree or the new one and ``built`` may remain
    (the caller's stale-temporary cleanup removes it). Without exchange support it is two
    renames, and :func:`recover_dir` (run here first) repairs a crash between them.
    """
    built, target = Path(built), Path(target)
    if built.parent.resolve() != target.parent.resolve():
        raise ValueError(f"{built} is not beside {target}: a swap needs the same directory")
    recover_dir(target)
    _fsync_tree(built)
    if not target.exists():
        os.replace(built, target)
        fsync_dir(target.parent)
        return
    if not target.is_dir() or target.is_symlink():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(target))
    if _exchange(built, target):
        old = built
    else:
        old = target.with_name(_old_name(target) + uuid.uuid4().hex[:8])
        os.replace(target, old)
        os.replace(built, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _tmp_dir_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


@contextlib.contextmanager
def replacing_dir(target: StrPath) -> Iterator[Path]:
    """Yield a fresh empty directory beside ``target``; fill it, and it replaces ``target``.

    When the block ends without an exception it is placed with :func:`replace_dir`;
    otherwise it is removed and ``target`` is untouched. Temporaries left by a crashed
    earlier run (an unfinished build, or an old tree after an exchange) are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(_tmp_dir_prefix(target) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(_tmp_dir_prefix(target) + uuid.uuid4().hex[:8])
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

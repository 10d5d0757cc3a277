"""common.durable: a crash at any step of a write leaves the old or the new content, never neither.

The fault injection runs each write in a child process (``python -c``) whose ``os.write``,
``os.fsync``, ``os.replace``, directory exchange and ``shutil.rmtree`` are wrapped: a first run
records the sequence of these steps, then one run per step is killed (``os._exit``) just
before it, just after it, and, for a write, after half of its bytes. After each killed run
the target is checked from the parent. A killed process keeps what it handed to the kernel,
so this proves the order of the steps (temp, fsync, rename, directory fsync), not what a
disk keeps through a power cut; the fsyncs are there for that.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from common import durable

ROOT = Path(__file__).resolve().parents[1]
KILLED = 77

OLD = b"old-" * 1000
NEW = b"NEW!" * 5000
OLD_JSON = {"v": "old", "n": list(range(50))}
NEW_JSON = {"v": "new", "pad": "x" * 20000}
OLD_TREE = {"a.bin": OLD, "sub/b.txt": b"old b"}
NEW_TREE = {"a.bin": NEW, "sub/b.txt": b"new b", "sub/deeper/c": b"c" * 3000}
TAIL = b"appended record\n" * 500

CHILD = rf"""
import json, os, shutil, sys
from pathlib import Path
from common import durable

op, target, stop_at, how, exchange = sys.argv[1:6]
target, stop_at = Path(target), int(stop_at)
events = []

def wrap(name, fn):
    def step(*a, **k):
        events.append(name)
        if len(events) == stop_at:
            if how == "before":
                os._exit({KILLED})
            if how == "half":
                fn(a[0], bytes(a[1])[: max(1, len(a[1]) // 2)])
                os._exit({KILLED})
            fn(*a, **k)
            os._exit({KILLED})
        return fn(*a, **k)
    return step

if exchange == "no":
    durable._exchange = lambda a, b: False
os.write = wrap("write", os.write)
os.fsync = wrap("fsync", os.fsync)
os.replace = wrap("replace", os.replace)
durable._exchange = wrap("exchange", durable._exchange)
shutil.rmtree = wrap("rmtree", shutil.rmtree)

new, tail = bytes.fromhex(sys.argv[6]), bytes.fromhex(sys.argv[7])
if op == "file":
    durable.replace_file(target, new)
elif op == "stream":
    with durable.replacing(target) as tmp, open(tmp, "wb") as f:
        f.write(new)
elif op == "json":
    durable.write_json(target, json.loads(new))
elif op == "dir":
    tree = json.loads(new)
    with durable.replacing_dir(target) as tmp:
        for rel, text in tree.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(bytes.fromhex(text))
elif op == "append":
    durable.append(target, tail)
print(json.dumps(events))
"""


def _child(
    op: str, target: Path, stop_at: int = 0, how: str = "before", exchange: bool = True
) -> subprocess.CompletedProcess[str]:
    if op == "json":
        payload = json.dumps(NEW_JSON).encode()
    elif op == "dir":
        payload = json.dumps({k: v.hex() for k, v in NEW_TREE.items()}).encode()
    else:
        payload = NEW
    argv = [op, str(target), str(stop_at), how, "yes" if exchange else "no"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, *argv, payload.hex(), TAIL.hex()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _write(op: str, target: Path) -> None:
    """The child's write, in this process (no fault)."""
    if op == "json":
        durable.write_json(target, NEW_JSON)
    elif op == "dir":
        with durable.replacing_dir(target) as tmp:
            for rel, data in NEW_TREE.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
    elif op == "append":
        durable.append(target, TAIL)
    else:
        durable.replace_file(target, NEW)


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _setup(op: str, target: Path) -> None:
    if op == "dir":
        for rel, data in OLD_TREE.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
    elif op == "json":
        target.write_text(json.dumps(OLD_JSON))
    else:
        target.write_bytes(OLD)


def _state(op: str, target: Path) -> str:
    """'old' or 'new' (or, for append, 'old+part'); fails on anything else."""
    assert target.exists(), f"{op}: the target is gone"
    if op == "dir":
        tree = _tree(target)
        assert tree in (OLD_TREE, NEW_TREE), f"a mixed tree: {sorted(tree)}"
        return "old" if tree == OLD_TREE else "new"
    data = target.read_bytes()
    if op == "json":
        obj = json.loads(data)  # never a half file
        assert obj in (OLD_JSON, NEW_JSON)
        return "old" if obj == OLD_JSON else "new"
    if op == "append":
        assert data.startswith(OLD), "the old content was damaged"
        assert TAIL.startswith(data[len(OLD) :]), "bytes that were never appended"
        return {len(OLD): "old", len(OLD) + len(TAIL): "new"}.get(len(data), "old+part")
    assert data in (OLD, NEW), f"partial content ({len(data)} bytes)"
    return "old" if data == OLD else "new"


def _trace(op: str, tmp_path: Path, exchange: bool = True) -> list[str]:
    target = Path(tempfile.mkdtemp(dir=tmp_path, prefix="trace-")) / "target"
    _setup(op, target)
    done = _child(op, target, exchange=exchange)
    assert done.returncode == 0, done.stderr
    assert _state(op, target) == "new"
    events: list[str] = json.loads(done.stdout)
    return events


def _kill_everywhere(op: str, tmp_path: Path, exchange: bool = True) -> dict[str, set[str]]:
    events = _trace(op, tmp_path, exchange)
    seen: dict[str, set[str]] = {}
    for i, name in enumerate(events, start=1):
        for how in ("before", "after", *(("half",) if name == "write" else ())):
            case = tmp_path / f"{i}-{how}"
            case.mkdir()
            target = case / "target"
            _setup(op, target)
            killed = _child(op, target, i, how, exchange)
            assert killed.returncode == KILLED, killed.stderr
            if not exchange and op == "dir":
                durable.recover_dir(target)  # what the next replace_dir does first
            state = _state(op, target)
            seen.setdefault(state, set()).add(f"{how} {name} #{i}")
            # And the next write after the crash goes through.
            _write(op, target)
            if op != "append":
                assert _state(op, target) == "new"
    return seen


@pytest.mark.parametrize("op", ["file", "stream", "json"])
def test_a_crash_at_any_step_of_a_file_replace_leaves_old_or_new(op: str, tmp_path: Path) -> None:
    events = _trace(op, tmp_path)
    # The order that makes it crash-safe: data, its fsync, the rename, the directory fsync.
    assert events[-3:] == ["fsync", "replace", "fsync"], events
    seen = _kill_everywhere(op, tmp_path)
    assert set(seen) == {"old", "new"}, seen
    # Up to the rename the old file stands; from it on, the new one.
    assert f"before replace #{len(events) - 1}" in seen["old"]
    assert f"after replace #{len(events) - 1}" in seen["new"]


def test_a_crash_at_any_step_of_a_directory_replace_leaves_old_or_new_tree(
    tmp_path: Path,
) -> None:
    events = _trace("dir", tmp_path)
    assert "exchange" in events and "replace" not in events, events  # one atomic swap
    seen = _kill_everywhere("dir", tmp_path)
    assert set(seen) == {"old", "new"}, seen
    assert any("before exchange" in s for s in seen["old"])
    assert any("after exchange" in s for s in seen["new"])


@pytest.mark.slow  # the fallback for filesystems without RENAME_EXCHANGE
def test_without_exchange_a_crash_between_the_renames_is_repaired(tmp_path: Path) -> None:
    events = _trace("dir", tmp_path, exchange=False)
    assert events.count("replace") == 2, events  # old aside, new in
    seen = _kill_everywhere("dir", tmp_path, exchange=False)
    assert set(seen) == {"old", "new"}, seen
    # Killed after the first rename: no target until recover_dir put the old tree back.
    first = events.index("replace") + 1
    assert f"after replace #{first}" in seen["old"]


def test_a_crash_during_an_append_keeps_the_old_content(tmp_path: Path) -> None:
    events = _trace("append", tmp_path)
    assert events[-1] == "fsync", events
    seen = _kill_everywhere("append", tmp_path)
    assert "old+part" in seen  # a torn tail: the reader's framing finds it
    assert "old" in seen and "new" in seen


# ------------------------------------------------------------------------- failures


def _no_space(*a: Any, **k: Any) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(OLD)
    monkeypatch.setattr(durable.os, "write", _no_space)
    with pytest.raises(OSError) as exc:
        durable.replace_file(target, NEW)
    assert exc.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        durable.write_json(target, NEW_JSON, tmp_name="state.json.tmp")
    with pytest.raises(OSError):
        durable.append(target, TAIL)
    assert target.read_bytes() == OLD
    assert list(tmp_path.iterdir()) == [target]


def test_a_failing_writer_leaves_the_old_file_or_tree(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(OLD)
    with pytest.raises(RuntimeError), durable.replacing(target) as tmp:
        tmp.write_bytes(NEW[:100])
        raise RuntimeError("the writer failed halfway")
    assert target.read_bytes() == OLD
    d = tmp_path / "dataset"
    _setup("dir", d)
    with pytest.raises(RuntimeError), durable.replacing_dir(d) as built:
        (built / "a.bin").write_bytes(NEW)
        raise RuntimeError("the export failed")
    assert _tree(d) == OLD_TREE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "dataset"]


def test_a_successful_write_leaves_nothing_behind(tmp_path: Path) -> None:
    f = tmp_path / "f.json"
    durable.write_json(f, NEW_JSON, mode=0o600)
    durable.write_json(f, OLD_JSON, mode=0o600)
    assert durable.read_json(f) == OLD_JSON
    assert f.stat().st_mode & 0o777 == 0o600
    d = tmp_path / "d"
    for tree in (OLD_TREE, NEW_TREE):
        with durable.replacing_dir(d) as built:
            for rel, data in tree.items():
                (built / rel).parent.mkdir(parents=True, exist_ok=True)
                (built / rel).write_bytes(data)
    assert _tree(d) == NEW_TREE
    durable.append(tmp_path / "log", b"one\n")
    durable.append(tmp_path / "log", b"two\n")
    assert (tmp_path / "log").read_bytes() == b"one\ntwo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.json", "log"]


def test_fixed_temporary_name_and_strict_json(tmp_path: Path) -> None:
    f = tmp_path / "episode.json"
    durable.write_json(f, {"b": 1, "a": 2}, tmp_name="episode.json.tmp")
    assert f.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        durable.write_json(f, {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode.json"]


def test_replace_dir_refuses_a_file_or_a_target_elsewhere(tmp_path: Path) -> None:
    built = tmp_path / "built"
    built.mkdir()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        durable.replace_dir(built, tmp_path / "file")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not beside"):
        durable.replace_dir(built, tmp_path / "other" / "target")
    assert (tmp_path / "file").read_bytes() == b"x"


def test_recover_dir_removes_old_trees_when_the_target_stands(tmp_path: Path) -> None:
    target = tmp_path / "slot"
    _setup("dir", target)
    stale = tmp_path / ".slot.old-1234abcd"
    stale.mkdir()
    durable.recover_dir(target)
    assert not stale.exists()
    assert _tree(target) == OLD_TREE


def test_move_renames_into_another_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.part").write_bytes(NEW)
    durable.move(tmp_path / "a" / "x.part", tmp_path / "b" / "x")
    assert (tmp_path / "b" / "x").read_bytes() == NEW
    assert not (tmp_path / "a" / "x.part").exists()

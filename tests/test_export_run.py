"""Export runs: splits, anonymisation, manifest, idempotence, resumption, and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from brain.cli import main
from rlds.datasets.anonymize import Anonymizer, load_or_create_salt
from rlds.datasets.manifest import verify_manifest
from rlds.datasets.run import ExportError, export_dataset
from rlds.datasets.splits import assign_splits, parse_fractions
from rlds.reader import list_episodes
from rlds.storage import is_exported
from rlds.types import StepInput
from rlds.writer import EpisodeWriter

SALT = b"s" * 32


def record(root: Path, n_episodes: int, steps: int = 12) -> None:
    rng = np.random.default_rng(0)
    for e in range(n_episodes):
        meta = {
            "robot_id": "donkey-07",
            "operator": "alice",
            "rate_hz": 20.0,
            "action_names": ["steering", "throttle"],
            "mode": "manual",
        }
        w = EpisodeWriter(root, meta)
        for i in range(steps):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            w.append(
                StepInput(
                    t=10.0 + e * 100 + i * 0.05,
                    action=np.array([np.sin(i), 0.1 * e]),
                    observation={"image": img},
                    timestamps={"image": 10.0 + e * 100 + i * 0.05 - 0.01},
                    extra={"frame_seq": i},
                )
            )
        w.close()


def test_splits_are_deterministic_and_sized():
    ids = [f"ep{i:03d}" for i in range(37)]
    a = assign_splits(ids, (0.8, 0.1, 0.1), seed=1)
    b = assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=1)
    c = assign_splits(ids, (0.8, 0.1, 0.1), seed=2)
    assert a == b  # order of the input does not matter
    assert a != c  # another seed, another split
    for s in (a, c):
        counts = {k: list(s.values()).count(k) for k in ("train", "val", "test")}
        assert counts == {"train": 29, "val": 4, "test": 4}  # largest remainder
    assert set(a) == set(ids)


def test_fraction_parsing_errors():
    assert parse_fractions("0.7,0.2,0.1") == (0.7, 0.2, 0.1)
    for bad in ("0.5,0.5", "a,b,c", "0.9,0.2,0.1", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError, match="--split"):
            parse_fractions(bad)


def test_anonymizer_drops_operator_and_hashes_ids():
    anon = Anonymizer(SALT)
    out = anon.metadata({"robot_id": "donkey-07", "operator": "alice", "nested": {"email": "x"}})
    assert "operator" not in out and "email" not in out["nested"]
    assert out["robot_id"] != "donkey-07" and out["robot_id"] == anon.id("donkey-07")
    assert Anonymizer(b"t" * 32).id("donkey-07") != out["robot_id"]


def test_salt_is_created_private_and_reused(tmp_path):
    p = tmp_path / "export.salt"
    s1 = load_or_create_salt(p)
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_salt(p) == s1


def test_lerobot_export_run_manifest_idempotent_and_anonymous(tmp_path):
    root = tmp_path / "episodes"
    record(root, 5)
    eps = list_episodes(root)
    out = tmp_path / "out"
    r1 = export_dataset(eps, out, fmt="lerobot", salt=SALT, seed=3, software_version="t")
    assert not r1.up_to_date and r1.episodes == 5 and sum(r1.splits.values()) == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert verify_manifest(out) == []
    assert manifest["seed"] == 3 and manifest["format"] == "lerobot"
    blob = "".join(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert "alice" not in blob and "donkey-07" not in blob
    assert SALT.decode() not in blob
    for ep in eps:
        assert ep.episode_id not in blob
        assert is_exported(ep.path)
    # again: nothing to do
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    r2 = export_dataset(eps, out, fmt="lerobot", salt=SALT, seed=3, software_version="t")
    assert r2.up_to_date
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # another seed rewrites it with another split
    r3 = export_dataset(eps, out, fmt="lerobot", salt=SALT, seed=4, software_version="t")
    assert not r3.up_to_date
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4
    # a tampered file is caught by the manifest
    victim = next(p for p in out.rglob("*.parquet"))
    victim.write_bytes(victim.read_bytes() + b"x")
    assert any("checksum" in p for p in verify_manifest(out))


def test_interrupted_export_leaves_no_half_dataset_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "episodes"
    record(root, 3)
    eps = list_episodes(root)
    out = tmp_path / "out"
    import rlds.datasets.run as run

    def boom(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(run, "build_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        export_dataset(eps, out, fmt="lerobot", salt=SALT)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    monkeypatch.undo()
    res = export_dataset(eps, out, fmt="lerobot", salt=SALT)
    assert res.episodes == 3 and verify_manifest(out) == []


def test_corrupt_episode_is_skipped_and_reported(tmp_path):
    root = tmp_path / "episodes"
    record(root, 3)
    eps = list_episodes(root)
    f = eps[1].path / "steps.tfrecord"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    res = export_dataset(eps, tmp_path / "out", fmt="lerobot", salt=SALT)
    assert res.episodes == 2
    assert len(res.skipped) == 1 and eps[1].episode_id in res.skipped[0]
    assert "CRC" in res.skipped[0] or "crc" in res.skipped[0].lower()
    with pytest.raises(ExportError, match="unknown export format"):
        export_dataset(eps, tmp_path / "o2", fmt="csv", salt=SALT)


def test_episodes_cli(tmp_path, capsys):
    root = tmp_path / "episodes"
    record(root, 4)
    cfg = tmp_path / "robot.yaml"
    cfg.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\nrecording:\n  root: {root}\n")
    assert main(["episodes", "list", "--config", str(cfg)]) == 0
    assert "4 episode(s)" in capsys.readouterr().out
    assert main(["episodes", "validate", "--config", str(cfg)]) == 0
    assert "4 ok, 0 with problems" in capsys.readouterr().out
    out = tmp_path / "ds"
    args = ["episodes", "export", "--config", str(cfg), "--format", "lerobot", "--out", str(out)]
    assert main([*args, "--split", "0.5,0.25,0.25", "--seed", "9"]) == 0
    text = capsys.readouterr().out
    assert "4 episode(s)" in text and "'train': 2" in text
    assert (tmp_path / "state" / "export.salt").exists()
    assert main([*args, "--split", "0.5,0.25,0.25", "--seed", "9"]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert main([*args, "--split", "1,1,1"]) == 2
    first = list_episodes(root)[0]
    with pytest.raises(SystemExit, match="matches 4 episodes"):
        main(["episodes", "show", "2", "--config", str(cfg)])
    assert main(["episodes", "show", first.episode_id, "--config", str(cfg)]) == 0
    assert '"robot_id": "donkey-07"' in capsys.readouterr().out
    assert main(["episodes", "delete", first.episode_id, "--yes", "--config", str(cfg)]) == 0
    assert len(list_episodes(root)) == 3


@pytest.mark.parametrize("missing", ["pyarrow", "av"])
def test_lerobot_export_without_the_export_extra_names_it(tmp_path, capsys, monkeypatch, missing):
    """A robot installed without the `export` extra: a message, not a traceback; nothing written."""
    root = tmp_path / "episodes"
    record(root, 2)
    cfg = tmp_path / "robot.yaml"
    cfg.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\nrecording:\n  root: {root}\n")
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    out = tmp_path / "ds"
    args = ["episodes", "export", "--config", str(cfg), "--format", "lerobot", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("continuon: export failed: the lerobot format needs pyarrow and av")
    assert f"{missing} (ModuleNotFoundError" in err
    assert "pip install 'continuon-brain[export]'" in err
    assert not out.exists()
    assert not any(is_exported(e.path) for e in list_episodes(root))

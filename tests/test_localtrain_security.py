"""A fine-tune can start only from the committed model, and nothing in a request names a file.

Regression tests for the LAN audit's F1 (an owner token got arbitrary weights committed as a
device-signed local derivative) and F4 (path injection and 500s in ``training/start``):

* the real daemon and the real Robot API: every hostile or mistyped body is a 422 naming
  the field, the robot stays IDLE and nothing is created anywhere; weights that are not the
  committed bundle's are refused with a message that names no path;
* the chain behind it, on real files: the committed slot and its manifest, the worker's
  check of the bytes it loads, promotion's check of the run's pins, and the real updater
  refusing a device-signed local bundle that names another base.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from brain.config import Config
from brain.localtrain.base import BaseRefused, base_weights, committed_base
from brain.localtrain.job import TrainJob
from brain.localtrain.manager import LocalTrainManager, StartRefused
from brain.localtrain.options import StartOptions, parse_options
from brain.localtrain.promote import Promoter
from brain.localtrain.trainer import check_torch, read_pinned_base
from brain.modes import Mode
from common.digest import sha256_file
from tests.api_helpers import make_config, running_api
from tests.localtrain_helpers import commit_cloud_base, write_episodes

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parent.parent


def _tiny_base(path: Path, seed: int) -> Path:
    """A brain.model checkpoint, written in a subprocess (no torch in this process)."""
    code = (
        "import sys, pathlib; from tests.localtrain_helpers import tiny_base; "
        "tiny_base(pathlib.Path(sys.argv[1]), int(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(seed)], check=True, cwd=ROOT)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lts")
    write_episodes(root / "episodes", 17, steps=12)
    _tiny_base(root / "base.pt", 0)
    _tiny_base(root / "attacker.pt", 1)  # other weights: what F1 trained from
    return root


# Every body the audit sent, and the field the 422 must name.
HOSTILE: list[tuple[object, str]] = [
    ({"run_id": "/tmp/continuon-f4-abs"}, "run_id"),
    ({"run_id": "../../continuon-f4-up"}, "run_id"),
    ({"base_model": "/proc/self/fd/0"}, "base_model"),
    ({"base_model": "/etc/shadow"}, "base_model"),
    ({"base_model": 5}, "base_model"),
    ({"episodes_root": "/etc"}, "episodes_root"),
    ({"episodes_root": 5}, "episodes_root"),
    ({"min_episodes": "x"}, "min_episodes"),
    ({"min_episodes": 2}, "min_episodes"),
    ({"closed_loop_steps": 20}, "closed_loop_steps"),
    ({"steps": "300"}, "steps"),
    ({"steps": 1e999}, "steps"),
    ({"steps": 3.0}, "steps"),
    ({"steps": 10**30}, "steps"),
    ({"max_seconds": 1e999}, "max_seconds"),
    ({"max_seconds": -1}, "max_seconds"),
    ({"max_seconds": "60"}, "max_seconds"),
    ({"resume": "yes"}, "resume"),
    ({"resume": 1}, "resume"),
]
NOT_AN_OBJECT: list[object] = [[], [1], 1e999, "x", 5, None]


def _hostile_raw() -> list[tuple[bytes, str]]:
    """The bodies as bytes (``1e999`` as the literal the audit sent, not Python's inf)."""
    out = [(json.dumps(b).replace("Infinity", "1e999").encode(), f) for b, f in HOSTILE]
    return out + [(json.dumps(b).replace("Infinity", "1e999").encode(), "") for b in NOT_AN_OBJECT]


# --------------------------------------------------------------------------- the options


def test_start_options_take_no_paths_and_name_the_bad_field():
    lt = Config().local_train
    for body, field in HOSTILE:
        with pytest.raises(ValidationError) as ei:
            parse_options(body, lt)
        assert field in {str(e["loc"][0]) for e in ei.value.errors()}, (body, ei.value)
    for body in NOT_AN_OBJECT[:-1]:  # None is "no options"
        with pytest.raises(ValidationError):
            parse_options(body, lt)
    # nothing in the model can carry a path, an id or a floor
    assert set(StartOptions.model_fields) == {"resume", "steps", "max_seconds"}


def test_floors_are_raised_by_a_request_never_lowered():
    lt = Config.model_validate({"local_train": {"steps": 300, "max_seconds": 120}}).local_train
    assert parse_options({"steps": 300, "max_seconds": 600.0}, lt).steps == 300
    for body, field in (({"steps": 299}, "steps"), ({"max_seconds": 60.0}, "max_seconds")):
        with pytest.raises(ValidationError) as ei:
            parse_options(body, lt)
        (err,) = ei.value.errors()
        assert err["loc"] == (field,) and "a floor is lowered in the robot's config" in err["msg"]
    low = Config.model_validate({"local_train": {"steps": 5, "max_seconds": 10}}).local_train
    assert parse_options({"steps": 5, "max_seconds": 10.0}, low).max_seconds == 10.0


# --------------------------------------------------------------------------- F4 on the daemon


def test_training_start_refuses_paths_and_bad_types_on_the_real_daemon(world, tmp_path):
    cfg = make_config(tmp_path)
    commit_cloud_base(cfg.ota_dir(), world / "base.pt")
    overrides = {
        "recording.root": str(world / "episodes"),
        "local_train.base_model": str(world / "base.pt"),
    }
    outside = [Path("/tmp/continuon-f4-abs"), tmp_path.parent / "continuon-f4-up"]
    for p in outside:
        assert not p.exists()
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    async def body():
        async with running_api(tmp_path, **overrides) as api:
            token = await api.token()
            h = api.bearer(token)
            for raw, field in _hostile_raw():
                resp = await api.client.post(
                    "/api/v1/training/start",
                    data=raw,
                    headers={**h, "Content-Type": "application/json"},
                )
                text = await resp.text()
                assert resp.status == 422, (raw, resp.status, text)
                err = json.loads(text)["error"]
                assert err["code"] == "invalid_body"
                assert err["message"].startswith(field or "body"), (raw, err)
                assert str(tmp_path) not in err["message"] and "/etc" not in err["message"]
                assert api.daemon.modes.mode is Mode.IDLE, raw
            st = await (await api.client.get("/api/v1/training", headers=h)).json()
            assert st["state"] == "idle" and st["run_id"] is None
            # a well-formed body below the config's floor names the field too
            resp = await api.client.post("/api/v1/training/start", json={"steps": 1}, headers=h)
            assert resp.status == 422 and "steps" in (await resp.json())["error"]["message"]
            assert api.daemon.modes.mode is Mode.IDLE

    asyncio.run(body())
    for p in outside:
        assert not p.exists(), p
    assert not (make_config(tmp_path).localtrain_dir() / "runs").exists()
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before]
    # the daemon makes its state dir, logs and API keys; never a run, never a job.json
    assert not [p for p in new if "localtrain" in p or p.endswith("job.json")], new


# --------------------------------------------------------------------------- F1: the chain


def test_weights_other_than_the_committed_model_are_refused_on_the_real_daemon(world, tmp_path):
    """F1's first link: the daemon trains only from the committed bundle's weights."""
    cfg = make_config(tmp_path)
    commit_cloud_base(cfg.ota_dir(), world / "base.pt")
    local_copy = tmp_path / "models" / "policy.pt"
    local_copy.parent.mkdir()
    local_copy.write_bytes((world / "attacker.pt").read_bytes())  # not the committed model

    async def body():
        async with running_api(
            tmp_path,
            **{
                "recording.root": str(world / "episodes"),
                "local_train.base_model": str(local_copy),
            },
        ) as api:
            h = api.bearer(await api.token())
            resp = await api.client.post("/api/v1/training/start", json={}, headers=h)
            err = (await resp.json())["error"]
            assert resp.status == 409, err
            assert "are not the committed bundle 1.4.0's" in err["message"]
            assert str(tmp_path) not in err["message"] and str(world) not in err["message"]
            assert api.daemon.modes.mode is Mode.IDLE

    asyncio.run(body())
    assert not (cfg.localtrain_dir() / "runs").exists()


def _manager(world: Path, tmp_path: Path, base: Path) -> LocalTrainManager:
    cfg = Config.model_validate(
        {
            "paths": {"state_dir": str(tmp_path / "state")},
            "recording": {"root": str(world / "episodes")},
            "local_train": {"base_model": str(base), "window": 8, "gate_closed_loop": False},
        }
    )
    return LocalTrainManager(cfg)


def test_no_committed_cloud_base_or_a_tampered_slot_refuses_training(world, tmp_path):
    mgr = _manager(world, tmp_path, world / "base.pt")
    with pytest.raises(StartRefused) as ei:
        mgr.start({})
    assert ei.value.problems == [
        "no committed cloud bundle to fine-tune from (install one through an update first)"
    ]
    ota = mgr.config.ota_dir()
    commit_cloud_base(ota, world / "base.pt")
    assert mgr.check_start() == []
    base = committed_base(mgr.config)
    assert base.version == "1.4.0" and base.checkpoint_sha256 == sha256_file(world / "base.pt")
    assert base_weights(mgr.config, base) == world / "base.pt"

    manifest = ota / "slots" / "A" / "edge_manifest.json"
    doc = json.loads(manifest.read_text())
    doc["provenance"]["checkpoint_sha256"] = sha256_file(world / "attacker.pt")
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (msg,) = mgr.check_start()
    assert msg.startswith("the committed slot A does not hold the bundle the updater committed")
    assert not (mgr.work_dir / "runs").exists()


def test_a_committed_local_derivative_is_not_a_base(world, tmp_path):
    from brain.ota.state import StateStore

    mgr = _manager(world, tmp_path, world / "base.pt")
    ota = mgr.config.ota_dir()
    commit_cloud_base(ota, world / "base.pt")
    manifest = ota / "slots" / "A" / "edge_manifest.json"
    doc = json.loads(manifest.read_text())
    doc["provenance"].update(
        source="local", base_version="1.3.0", base_manifest_sha256="ab" * 32, checkpoint_sha256=None
    )
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    store = StateStore(ota)
    st = store.load()
    rec = st.committed.model_copy(update={"manifest_sha256": sha256_file(manifest)})
    store.save(st.with_(committed=rec))
    with pytest.raises(BaseRefused, match="is itself a local fine-tune"):
        committed_base(mgr.config)


def test_the_worker_loads_only_the_bytes_the_job_pinned(world, tmp_path):
    """Swapping the file after the start check is caught on the bytes actually loaded."""
    base = tmp_path / "base.pt"
    base.write_bytes((world / "base.pt").read_bytes())
    job = TrainJob(
        run_dir=str(tmp_path / "run"),
        base_model=str(base),
        episodes_root=str(world / "episodes"),
        cache_dir=str(tmp_path / "cache"),
        base_sha256=sha256_file(base),
    )
    sha, blob = read_pinned_base(job)
    assert sha == job.base_sha256 and blob == base.read_bytes()
    base.write_bytes((world / "attacker.pt").read_bytes())
    with pytest.raises(ValueError, match="not the committed model the run was started on"):
        read_pinned_base(job)
    job.base_sha256 = None  # a job.json from before pinning
    with pytest.raises(ValueError, match="pins no base model"):
        read_pinned_base(job)


def test_the_worker_refuses_a_torch_with_unsafe_weights_only_loading():
    for old in ("2.5.1", "2.5.1+cpu", "1.13.0", "2.0"):
        with pytest.raises(RuntimeError, match="CVE-2025-32434"):
            check_torch(old)
    for ok in ("2.6.0", "2.6.0+cu124", "2.13.0+cpu", "3.0.0a0"):
        check_torch(ok)


def _fake_run(run_dir: Path, *, pinned: str, manifest_sha: str, loaded: str) -> Path:
    """A finished run as the worker leaves it (job.json and export_report.json)."""
    TrainJob(
        run_dir=str(run_dir),
        base_model="unused",
        episodes_root="unused",
        cache_dir="unused",
        base_sha256=pinned,
        base_version="1.4.0",
        base_manifest_sha256=manifest_sha,
    ).write()
    export = run_dir / "export"
    export.mkdir()
    (export / "export_report.json").write_text(
        json.dumps({"source": {"checkpoint_sha256": None, "base_model_sha256": loaded}})
    )
    return run_dir


def test_promotion_refuses_a_candidate_not_trained_on_the_committed_weights(world, tmp_path):
    cfg = Config.model_validate({"paths": {"state_dir": str(tmp_path / "state")}})
    manifest_sha = commit_cloud_base(cfg.ota_dir(), world / "base.pt")
    good, bad = sha256_file(world / "base.pt"), sha256_file(world / "attacker.pt")
    installed: list[Path] = []
    promoter = Promoter(
        cfg,
        base_info=lambda: committed_base(cfg),
        install=lambda a: installed.append(a) or {},
        sign=lambda b: b"never",
    )
    cases = {
        "loaded": dict(pinned=good, manifest_sha=manifest_sha, loaded=bad),
        "pinned": dict(pinned=bad, manifest_sha=manifest_sha, loaded=bad),
        "other-bundle": dict(pinned=good, manifest_sha="cd" * 32, loaded=good),
    }
    for name, pins in cases.items():
        run = _fake_run(tmp_path / "runs" / name, **pins)
        out = promoter(run, {"export": {"onnx": "x"}})
        assert not out["installed"] and out["error"].startswith("promotion refused: "), out
        assert not list(run.glob("*.bundle.tar"))
    assert (
        "the worker loaded base weights sha256"
        in promoter(tmp_path / "runs" / "loaded", {"export": {}})["error"]
    )
    assert (
        "another committed bundle than 1.4.0"
        in promoter(tmp_path / "runs" / "other-bundle", {"export": {}})["error"]
    )
    assert installed == []


def test_the_updater_refuses_a_local_bundle_naming_another_base_on_the_real_daemon(world, tmp_path):
    """F1's last link: a device-signed local bundle whose base manifest sha256 is not the
    committed bundle's is refused by the daemon's own updater (upload through the API)."""
    from brain.bundle.pack import build_bundle
    from brain.ota.device_key import load_or_create_device_key, sign_local_manifest
    from tests.ota_helpers import fast_safety, make_export

    cfg = make_config(tmp_path)
    committed_sha = commit_cloud_base(cfg.ota_dir(), world / "base.pt")
    key = load_or_create_device_key(cfg.state_dir())  # the robot's own key signs it

    def local_bundle(name: str, base_manifest_sha256: str) -> bytes:
        archive = build_bundle(
            make_export(tmp_path / name / "export", bias=0.9),  # "full right" on every frame
            tmp_path / name / "bundle.tar",
            version=f"1.4.0+local.{name}",
            release_counter=7,
            hardware_id="continuon-car",
            safety=fast_safety(),
            provenance={
                "source": "local",
                "base_version": "1.4.0",
                "base_manifest_sha256": base_manifest_sha256,
            },
            sign=lambda m: sign_local_manifest(m, key),
        )
        return archive.read_bytes()

    forged = local_bundle("forged", "cd" * 32)

    async def body():
        async with running_api(tmp_path) as api:
            h = api.bearer(await api.token())
            before = await (await api.client.get("/api/v1/updates", headers=h)).json()
            assert before["committed"]["version"] == "1.4.0"
            resp = await api.client.post(
                "/api/v1/updates/upload",
                data=forged,
                headers={**h, "Content-Type": "application/octet-stream"},
            )
            err = (await resp.json())["error"]
            assert resp.status == 422, err
            assert "is not the committed bundle's" in err["message"], err
            after = await (await api.client.get("/api/v1/updates", headers=h)).json()
            assert after["committed"]["version"] == "1.4.0"
            assert after["committed"]["manifest_sha256"] == committed_sha

    asyncio.run(body())

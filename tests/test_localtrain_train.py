"""The fine-tune itself (in-process, the worker's Trainer), the gate and the promotion path.

A tiny policy on small real episodes: LoRA adapters really train (the held-out error goes
down), are saved in peft's format and load back with peft; a resumed run equals a straight
one; the gate rejects a worse candidate and one that changes the actions too much; an
accepted one is merged, exported to ONNX (+ INT8), packed as a local bundle and staged
through a real OTA Updater.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from brain.localtrain import gate as G  # noqa: E402
from brain.localtrain.candidate import export_candidate, run_gate  # noqa: E402
from brain.localtrain.job import GateSettings, TrainJob  # noqa: E402
from brain.localtrain.trainer import Events, Trainer  # noqa: E402
from common.digest import sha256_file  # noqa: E402
from tests.localtrain_helpers import tiny_base, write_episodes  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]


def pin_committed(job: TrainJob, manifest_sha256: str) -> None:
    """The run was started on the bundle whose manifest has this sha256 (as the manager pins)."""
    job.base_manifest_sha256 = manifest_sha256
    job.write()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lt")
    write_episodes(root / "episodes", 18, steps=24)
    tiny_base(root / "base.pt")
    return root


def make_job(world: Path, run: str, **kw) -> TrainJob:
    gate = kw.pop("gate", GateSettings(max_action_change=2.0, closed_loop=False))
    base = Path(kw.pop("base_model", world / "base.pt"))
    job = TrainJob(
        run_dir=str(world / "runs" / run),
        base_model=str(base),
        base_sha256=sha256_file(base),
        base_version="1.4.0",
        episodes_root=str(world / "episodes"),
        cache_dir=str(world / "cache"),
        window=8,
        min_episodes=16,
        gate=gate,
        **kw,
    )
    job.write()
    return job


def trainer(job: TrainJob) -> Trainer:
    return Trainer(job, Events(job.path("progress")))


def lora_state(tr: Trainer) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(tr.model).items()}


@pytest.fixture(scope="module")
def trained(world):
    job = make_job(world, "main", steps=40, lr=1e-2)
    tr = trainer(job)
    losses = [tr.train_step() for _ in range(job.steps)]
    return tr, losses


def test_fine_tune_saves_a_peft_adapter_that_loads_back_and_changes_outputs(world, trained):
    from peft import PeftModel

    from brain.model import load_policy

    tr, losses = trained
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    out = tr.save_adapter()
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    assert "encoder.proj" in cfg["target_modules"]
    meta = json.loads((out / "continuon_adapter.json").read_text())
    assert len(meta["trained_on"]) == len(tr.train_eps)
    manifest = json.loads((out / "manifest.json").read_text())  # for edge_agent's uploader
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {"manifest.json"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest["files"])
    assert len(manifest["episodes"]) == len(tr.train_eps) + len(tr.held_eps)

    base = load_policy(world / "base.pt").eval()
    held = tr.D.load_episode(tr.held_eps[0], (24, 32), tr.job.label, Path(tr.job.cache_dir))
    x = torch.from_numpy(np.asarray(held.frames[:6]))[None]
    with torch.no_grad():
        before, _, _ = base.forward_sequence(x, *base.initial_state(1))
    loaded = PeftModel.from_pretrained(load_policy(world / "base.pt"), str(out)).eval()
    policy = loaded.base_model.model
    with torch.no_grad():
        after, _, _ = policy.forward_sequence(x, *policy.initial_state(1))
        tr.model.eval()
        ref, _, _ = tr.policy.forward_sequence(x, *tr.policy.initial_state(1))
    assert float((after - before).abs().max()) > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-5)  # ... exactly as trained


def test_resume_from_a_checkpoint_equals_a_straight_run(world):
    straight = trainer(make_job(world, "straight", steps=6))
    for _ in range(6):
        straight.train_step()
    first = trainer(make_job(world, "resumed", steps=6))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    second = trainer(TrainJob.read(first.job.path("job")))
    assert second.load_checkpoint() and second.step == 3
    for _ in range(3):
        second.train_step()
    a, b = lora_state(straight), lora_state(second)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_checkpoint_of_another_base_is_refused(world, tmp_path):
    tr = trainer(make_job(world, "other-base", steps=2))
    tr.train_step()
    tr.save_checkpoint()
    tiny_base(tmp_path / "b2.pt", seed=7)
    job = TrainJob.read(tr.job.path("job"))
    job.base_model = str(tmp_path / "b2.pt")
    job.base_sha256 = sha256_file(tmp_path / "b2.pt")  # a run on another committed model
    with pytest.raises(ValueError, match="another base model"):
        trainer(job).load_checkpoint()


def test_gate_accepts_the_improved_candidate(trained):
    tr, _ = trained
    d = run_gate(tr)
    assert d.accepted, d.reasons
    m = d.metrics
    assert m.held_out_episodes == len(tr.held_eps) > 0
    assert m.candidate_mae < m.base_mae
    saved = json.loads(tr.job.path("gate").read_text())
    assert saved["accepted"] is True


def test_gate_rejects_an_action_change_beyond_the_safety_bound(trained):
    tr, _ = trained
    old = tr.job.gate
    tr.job.gate = GateSettings(max_action_change=1e-4, closed_loop=False)
    try:
        d = run_gate(tr)
    finally:
        tr.job.gate = old
    assert not d.accepted
    assert any("exceeds the safety bound" in r for r in d.reasons)


def test_gate_drives_both_policies_in_the_sim(trained):
    tr, _ = trained
    old = tr.job.gate
    sim = {"track": "oval", "seed": 0, "lighting": "dusk", "texture": "carpet"}
    tr.job.gate = GateSettings(
        max_action_change=2.0, closed_loop=True, closed_loop_steps=40, sim=sim
    )
    try:
        d = run_gate(tr)
    finally:
        tr.job.gate = old
    cl = d.metrics.closed_loop
    assert set(cl) == {"base", "candidate"}
    for row in cl.values():
        assert 0 < row["steps"] <= 40 and row["termination"] != "bad_action"
    assert d.accepted == (G.closed_loop_worse(cl["base"], cl["candidate"]) is None)


def test_gate_rejects_a_worse_candidate(world):
    tr = trainer(make_job(world, "worse", steps=1))
    with torch.no_grad():  # sabotage the adapter: a candidate that really drives worse
        g = torch.Generator().manual_seed(0)
        for name, p in tr.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    d = run_gate(tr)
    assert not d.accepted
    assert any(r.startswith("worse on held-out episodes") for r in d.reasons)
    assert d.metrics.candidate_mae > d.metrics.base_mae


def test_decide_rules():
    ok = G.GateMetrics(3, 60, 0.30, 0.20, 0.05)
    assert G.decide(ok, max_action_change=0.25, min_improvement=0.0).accepted
    assert not G.decide(ok, max_action_change=0.25, min_improvement=0.5).accepted  # 0.2 > 0.15
    none = G.GateMetrics(0, 0, None, None, None)
    d = G.decide(none, max_action_change=0.25, min_improvement=0.0)
    assert not d.accepted and "no held-out episodes" in d.reasons[0]
    row = {"progress_m": 10.0, "off_track_events": 0, "mean_abs_cte_m": 0.1, "termination": "x"}
    worse = dict(row, progress_m=5.0)
    cl = G.GateMetrics(3, 60, 0.3, 0.2, 0.05, closed_loop={"base": row, "candidate": worse})
    d = G.decide(cl, max_action_change=0.25, min_improvement=0.0)
    assert not d.accepted and "worse in closed loop: progress" in d.reasons[0]
    off = dict(row, off_track_events=2)
    cl.closed_loop = {"base": row, "candidate": off}
    assert "off-track" in G.decide(cl, max_action_change=1, min_improvement=0).reasons[0]


def test_accepted_candidate_is_merged_exported_packed_and_signed(world, trained, tmp_path):
    from brain.bundle.unpack import unpack_bundle
    from brain.config import Config
    from brain.localtrain.base import CommittedBase
    from brain.localtrain.promote import Promoter
    from brain.ota.device_key import verify_local_bundle
    from brain.ota.updater import UpdateRefused
    from brain.ota.wiring import create_updater
    from brain.policy import load_model

    tr, _ = trained
    res = export_candidate(tr)
    assert res["onnx_parity_max_abs"] < 1e-3
    onnx_path = Path(res["onnx"])
    model = load_model(onnx_path, threads=1)
    assert model.input_size == (24, 32)
    report = json.loads((onnx_path.parent / "export_report.json").read_text())
    backends = [a["backend"] for a in report["artifacts"]]
    assert "onnx_fp32" in backends
    if res.get("int8"):
        assert backends[0] == "onnx_int8" and res["int8_parity"]["mean_abs"] <= 0.05

    state = tmp_path / "state"
    cfg = Config.model_validate(
        {
            "paths": {"state_dir": str(state)},
            "ota": {"device_public_key": str(state / "device_key.pub")},
        }
    )
    archives: list[Path] = []

    def install(archive: Path) -> dict:
        archives.append(archive)
        return {"result": "captured"}

    base = CommittedBase("A", "1.4.0", 7, "ab" * 32, sha256_file(world / "base.pt"))
    pin_committed(tr.job, base.manifest_sha256)
    promo = Promoter(cfg, base_info=lambda: base, install=install)(
        Path(tr.job.run_dir), {"adapter": str(tr.job.path("adapter")), "export": res}
    )
    assert promo["installed"] and promo["signed"], promo
    assert promo["version"].startswith("1.4.0+local.")
    assert archives == [Path(promo["bundle"])]

    # What the robot's updater checks for a local bundle: device signature + derivation.
    staged = tmp_path / "staged"
    unpack_bundle(archives[0], staged)
    manifest = verify_local_bundle(
        staged,
        device_public_key=(state / "device_key.pub").read_bytes(),
        committed_base="1.4.0",
        committed_base_manifest_sha256="ab" * 32,
    )
    assert manifest.provenance.source == "local"
    assert manifest.provenance.base_version == "1.4.0"
    assert set(manifest.artifacts) == {a["file"] for a in report["artifacts"]}

    # The real updater refuses a local bundle when no cloud base is committed.
    up = create_updater(cfg)
    with pytest.raises(UpdateRefused, match="committed cloud base"):
        asyncio.run(up.install(archives[0]))


def test_no_committed_base_leaves_the_export_in_place(trained, tmp_path):
    from brain.config import Config
    from brain.localtrain.promote import Promoter

    tr, _ = trained
    cfg = Config.model_validate({"paths": {"state_dir": str(tmp_path / "state")}})
    promo = Promoter(cfg, base_info=lambda: None, install=None)(
        Path(tr.job.run_dir), {"export": {"onnx": "x"}}
    )
    assert not promo["installed"]
    assert "no committed bundle" in promo["error"]


def test_promoted_bundle_installs_through_the_real_updater_on_a_committed_cloud_base(
    world, trained, tmp_path
):
    """The whole promotion chain: cloud base committed in slot A → fine-tune → merge → ONNX →
    device-signed local bundle → the robot's real Updater (trust check, unpack into B, smoke
    test, swap in a running PolicyRunner, health window) → committed, driving on it."""
    from brain.bundle.pack import build_bundle
    from brain.config import Config
    from brain.localtrain.base import committed_base
    from brain.localtrain.promote import Promoter
    from brain.model import export_onnx, load_policy
    from brain.ota.wiring import create_updater
    from brain.policy import PolicyRunner
    from tests.ota_helpers import seed_committed

    state = tmp_path / "state"
    cfg = Config.model_validate(
        {
            "paths": {"state_dir": str(state)},
            "ota": {"health_window_s": 0.3, "max_deadline_misses": 50, "smoke_steps": 3},
        }
    )
    # The cloud base: the same base checkpoint the adapter was trained on, as cloud_jobs ships it.
    cloud = tmp_path / "cloud-export"
    cloud.mkdir()
    export_onnx(load_policy(world / "base.pt"), cloud / "model_fp32.onnx", version="1.4.0")
    (cloud / "export_report.json").write_text(
        json.dumps(
            {
                "action_names": ["steering", "throttle"],
                "image": {"height": 24, "width": 32},
                "artifacts": [{"file": "model_fp32.onnx", "backend": "onnx_fp32"}],
                "preferred_backends": ["onnx_fp32"],
                "source": {"checkpoint_sha256": sha256_file(world / "base.pt")},
            }
        )
    )
    archive = build_bundle(
        cloud,
        tmp_path / "cloud.tar",
        version="1.4.0",
        release_counter=7,
        hardware_id=cfg.ota_hardware_id(),
        safety={"max_latency_ms": 500.0, "health_window_s": 0.3},
    )
    committed = seed_committed(cfg.ota_dir(), archive, "A").committed

    runner = PolicyRunner(None, deadline_s=0.5).start()
    up = create_updater(cfg, policy=runner).open()
    try:
        runner.swap(up.load_active()).wait(5)
        assert runner.model.version == "1.4.0"

        def install(path: Path) -> dict:
            return asyncio.run(up.install(path))

        tr, _ = trained
        pin_committed(tr.job, committed.manifest_sha256)
        res = export_candidate(tr)
        promo = Promoter(cfg, base_info=lambda: committed_base(cfg), install=install)(
            Path(tr.job.run_dir), {"adapter": str(tr.job.path("adapter")), "export": res}
        )
        assert promo["installed"], promo
        out = promo["install"]
        assert out["result"] == f"committed {promo['version']}", out
        assert out["committed"]["source"] == "local"
        assert out["committed"]["slot"] == "B"
        assert runner.model.version == promo["version"]  # the robot drives the fine-tuned model
        # and it really runs: one step through the runner's model on a camera-sized frame
        action, _ = runner.model.step(np.zeros((120, 160, 3), np.uint8))
        assert np.isfinite(action).all()
    finally:
        up.close()
        runner.close()

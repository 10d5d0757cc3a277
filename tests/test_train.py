"""cloud_jobs training: config, data (native + TFDS export), loop, exact resume, DDP, XLA.

Small synthetic episodes (160x120, a bright bar whose position is the steering
label) and the real ``brain.model`` policy with the tiny overrides of
``configs/train/tiny.yaml``, so every run takes a few seconds on CPU.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from brain.model import build_policy, export_onnx, load_policy  # noqa: E402
from cloud_jobs.train import data as D  # noqa: E402
from cloud_jobs.train import run_training  # noqa: E402
from cloud_jobs.train import windows as WS  # noqa: E402
from cloud_jobs.train.config import (  # noqa: E402
    AugmentConfig,
    LossConfig,
    TrainConfig,
    TrainConfigError,
    load_train_config,
    parse_train_config,
)
from cloud_jobs.train.dist import Dist  # noqa: E402
from cloud_jobs.train.errors import TrainingError  # noqa: E402
from cloud_jobs.train.optim import build_optimizers, lr_factor, split_params  # noqa: E402
from cloud_jobs.train.step import Stepper, bc_loss, check_recurrence  # noqa: E402
from cloud_jobs.train.tfds_read import list_tfds_episodes, parse_example  # noqa: E402
from rlds.datasets import tf_example as pb  # noqa: E402
from rlds.datasets.tfds import export_tfds  # noqa: E402
from rlds.reader import list_episodes  # noqa: E402
from rlds.types import StepInput  # noqa: E402
from rlds.writer import EpisodeWriter  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "train" / "tiny.yaml"
H, W = 120, 160
TRACKS = ("oval", "figure8")


def write_episodes(root: Path, n: int = 4, steps: int = 40, seed: int = 0) -> None:
    for e in range(n):
        rng = np.random.default_rng([seed, e])
        meta = {
            "robot_id": "sim",
            "action_names": ["steering", "throttle"],
            "rate_hz": 20.0,
            "sim": {"track": TRACKS[e % len(TRACKS)]},
        }
        with EpisodeWriter(root, meta, fsync_interval_s=60) as wr:
            x = rng.uniform(20, W - 20)
            for i in range(steps):
                x = float(np.clip(x + rng.normal(0, 4), 10, W - 10))
                img = np.full((H, W, 3), 60, np.uint8)
                img[:, int(x) - 4 : int(x) + 4] = 220
                steer = (x - W / 2) / (W / 2)
                wr.append(
                    StepInput(
                        t=i * 0.05,
                        action=[steer, 0.5],
                        observation={"image": img},
                        extra={"expert_action": [steer, 0.25], "executed_action": [steer, 0.4]},
                    )
                )


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("episodes")
    write_episodes(root)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny(episodes: Path, cache_dir: Path, **sections: dict) -> TrainConfig:
    cfg = load_train_config(TINY)
    data = {"sources": [{"path": str(episodes)}], "cache_dir": str(cache_dir)}
    data.update(sections.pop("data", {}))
    return cfg.with_updates(data=data, **sections)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (run_dir / "metrics.ndjson").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_policy(path).state_dict()


# --------------------------------------------------------------------------- config


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        cfg = load_train_config(path)
        assert cfg.train.window > cfg.train.burn_in
    pi5 = load_train_config(ROOT / "configs" / "train" / "pi5.yaml")
    assert pi5.model.preset == "pi5" and pi5.precision == "fp32"
    for name in ("pi5", "tpu"):  # the shipped policy is trained with the memorization recipe
        cfg = load_train_config(ROOT / "configs" / "train" / f"{name}.yaml")
        rec = cfg.recurrence
        assert rec.stateful and rec.teacher_forcing and rec.memory_dropout > 0, name
        policy = build_policy(cfg.model.preset, **dict(cfg.model.overrides))
        assert policy.config.image_hw == (120, 160) and policy.config.motion_feedback
        assert check_recurrence(cfg, policy) == cfg.train.batch_size // 4  # the model honours it


def test_config_errors_name_line_key_and_value(tmp_path: Path) -> None:
    text = TINY.read_text().replace("  batch_size: 4", "  batch_size: 0\n  bacth: 3")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(TrainConfigError) as e:
        load_train_config(bad)
    msg = str(e.value)
    line = text.splitlines().index("  batch_size: 0") + 1
    assert f"bad.yaml:{line}: train.batch_size = 0" in msg
    assert "unknown key 'train.bacth'" in msg
    raw = load_train_config(TINY).model_dump(mode="json")
    raw["train"]["epochs"] = 2
    with pytest.raises(TrainConfigError, match=r"exactly one of train\.steps and train\.epochs"):
        parse_train_config(raw)
    raw["train"]["epochs"] = None
    raw["train"]["burn_in"] = raw["train"]["window"]
    with pytest.raises(TrainConfigError, match="burn_in"):
        parse_train_config(raw)
    raw["train"]["burn_in"] = 0
    raw["data"]["label_smoothing"] = 4
    with pytest.raises(TrainConfigError, match="odd"):
        parse_train_config(raw)
    raw["data"]["label_smoothing"] = 1
    raw["optim"]["name"] = "sgd"
    with pytest.raises(TrainConfigError, match=r"optim\.name = 'sgd'"):
        parse_train_config(raw)


# --------------------------------------------------------------------------- data


def test_tfds_export_reads_back_like_the_episodes(episodes: Path, tmp_path: Path) -> None:
    eps = list_episodes(episodes)
    out = tmp_path / "tfds"
    splits = {e.episode_id: ("val" if i == 0 else "train") for i, e in enumerate(eps)}
    export_tfds(eps, out, splits=splits, include_extra=True)
    got = list_tfds_episodes(out)
    assert sorted(g.episode_id for g in got) == sorted(splits)
    assert {g.split for g in got} == {"train", "val"}
    assert [g.episode_id for g in list_tfds_episodes(out, ["val"])] == [eps[0].episode_id]
    by_id = {g.episode_id: g for g in got}
    for ep in eps:
        jpegs, actions, extras = by_id[ep.episode_id].steps_arrays()
        steps = list(ep.steps(decode_images=False))
        assert jpegs == [s.encoded["image"] for s in steps]
        np.testing.assert_array_equal(actions, np.stack([s.action for s in steps]))
        assert extras == [s.extra for s in steps]
        assert by_id[ep.episode_id].metadata["sim"]["track"] == ep.metadata["sim"]["track"]


def test_protobuf_reader_decodes_every_feature_kind() -> None:
    data = pb.serialize_example(
        {
            "b": pb.bytes_feature([b"", b"xyz" * 100]),
            "f": pb.float_feature(np.array([1.5, -2.25], np.float32)),
            "i": pb.int64_feature([0, 1, -1, 2**40, -(2**63)]),
            "e": pb.int64_feature([]),
        }
    )
    got = parse_example(data)
    assert got["b"][0] == "bytes" and [bytes(v) for v in got["b"][1]] == [b"", b"xyz" * 100]
    np.testing.assert_array_equal(got["f"][1], [1.5, -2.25])
    assert got["i"][1].tolist() == [0, 1, -1, 2**40, -(2**63)]
    assert got["e"][1].tolist() == []


def test_holdout_by_track_ids_and_fraction(episodes: Path) -> None:
    cfg = tiny(episodes, Path("/nonexistent"))
    by_track = D.list_data(
        cfg.data.model_copy(
            update={
                "holdout": cfg.data.holdout.model_copy(
                    update={"tracks": ["figure8"], "fraction": 0.0}
                )
            }
        ),
        seed=0,
    )
    assert {r.track for r in by_track if r.role == "val"} == {"figure8"}
    assert {r.track for r in by_track if r.role == "train"} == {"oval"}
    one = by_track[0].episode_id
    by_id = D.list_data(
        cfg.data.model_copy(
            update={
                "holdout": cfg.data.holdout.model_copy(update={"episodes": [one], "fraction": 0.0})
            }
        ),
        seed=0,
    )
    assert [r.episode_id for r in by_id if r.role == "val"] == [one]
    frac = D.list_data(cfg.data, seed=0)  # tiny: fraction 0.25 of 4 -> 1
    assert sum(r.role == "val" for r in frac) == 1
    assert [r.role for r in D.list_data(cfg.data, seed=0)] == [r.role for r in frac]
    with pytest.raises(D.DataError, match="unknown episode"):
        D.list_data(
            cfg.data.model_copy(
                update={"holdout": cfg.data.holdout.model_copy(update={"episodes": ["nope"]})}
            ),
            seed=0,
        )


def test_cache_labels_windows_and_sampler(episodes: Path, tmp_path: Path) -> None:
    from brain.model import preprocess_frame

    cfg = tiny(episodes, tmp_path)
    refs = D.list_data(cfg.data, seed=0)
    path = D.build_cache_entry(refs[0], tmp_path, (H, W), preprocess_frame)
    mtime = (path / "frames.npy").stat().st_mtime_ns
    assert D.build_cache_entry(refs[0], tmp_path, (H, W), preprocess_frame) == path
    assert (path / "frames.npy").stat().st_mtime_ns == mtime  # keyed by checksum: reused
    ep = D.load_cache_entry(path, "action", 1)
    assert ep.frames.shape == (40, H, W, 3) and ep.frames.dtype == np.uint8
    assert np.all(ep.labels[:, 1] == 0.5)
    assert np.all(D.load_cache_entry(path, "expert_action", 1).labels[:, 1] == 0.25)
    np.testing.assert_allclose(ep.executed[:, 1], 0.4)  # what teacher forcing feeds back
    np.testing.assert_array_equal(ep.executed[:, 0], ep.labels[:, 0])
    smooth = D.load_cache_entry(path, "action", 5).labels
    np.testing.assert_allclose(smooth[10, 0], ep.labels[8:13, 0].mean(), rtol=1e-5)

    ws = WS.WindowSet([ep, ep], window=8, stride=4)
    assert len(ws) == 2 * len(range(0, 40 - 8 + 1, 4))
    frames, labels, executed = ws.get(len(ws) - 1)
    assert frames.shape == (8, H, W, 3) and labels.shape == executed.shape == (8, 2)

    # ranks get disjoint shards that together cover each epoch; positions resume exactly
    n, b = 23, 4
    shards = [WS.WindowBatchSampler(n, b, seed=1, rank=r, world=2) for r in range(2)]
    per_epoch = shards[0].batches_per_epoch
    ids = []
    for s in shards:
        it = iter(s)
        ids.append([item.wid for _ in range(per_epoch) for item in next(it)])
    assert set(ids[0]) | set(ids[1]) == set(range(n))
    assert len(ids[0]) == len(ids[1]) == per_epoch * b
    straight = iter(WS.WindowBatchSampler(n, b, seed=1))
    batches = [next(straight) for _ in range(9)]
    s1 = WS.WindowBatchSampler(n, b, seed=1)
    e, k = divmod(7, s1.batches_per_epoch)
    again = next(iter(WS.WindowBatchSampler(n, b, seed=1, start_epoch=e, start_batch=k)))
    assert again == batches[7]


def test_stateful_sampler_walks_episodes_window_after_window() -> None:
    def ep(name: str, n: int) -> D.CachedEpisode:
        z = np.zeros((n, 2), np.float32)
        return D.CachedEpisode(name, None, np.zeros((n, 2, 2, 3), np.uint8), z, z)

    ws = WS.WindowSet([ep("a", 40), ep("b", 24), ep("short", 5)], window=8, stride=8)
    sampler = WS.StatefulBatchSampler(ws, 3, seed=2)
    it = iter(sampler)
    batches = [next(it) for _ in range(40)]
    seen = set()
    for j in range(3):
        walk = [b[j] for b in batches]
        assert walk[0].fresh
        for prev, cur in itertools.pairwise(walk):
            (e0, s0), (e1, s1) = ws.index[prev.wid], ws.index[cur.wid]
            if cur.fresh:  # a new visit begins only where the last one ran out of windows
                assert s0 + 16 > len(ws.episodes[e0]) and cur.key != prev.key
                assert s1 == 0  # and, after the first, at the episode's start
            else:  # otherwise the very next window of the same episode, the same visit
                assert (e1, s1) == (e0, s0 + 8) and cur.key == prev.key
        seen |= {int(ws.index[i.wid][0]) for i in walk}
    assert seen == {0, 1}  # the too-short episode has no window
    assert len({b[j].key for b in batches[:1] for j in range(3)}) == 3
    assert len({tuple(b[j].wid for b in batches[:6]) for j in range(3)}) > 1  # not in lockstep
    # the position is a function of the step: a resumed sampler replays it
    assert next(iter(WS.StatefulBatchSampler(ws, 3, seed=2, start_step=17))) == batches[17]
    # another rank walks its own slots
    rank1 = next(iter(WS.StatefulBatchSampler(ws, 3, seed=2, rank=1, world=2)))
    assert {i.key for i in rank1}.isdisjoint({i.key for i in batches[0]})


def test_augmentation_is_seeded_and_bounded() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    cfg = AugmentConfig(brightness=0.3, contrast=0.3, shift_px=3)
    a = WS.augment_window(frames, cfg, np.random.default_rng(5))
    b = WS.augment_window(frames, cfg, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == frames.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, frames)
    off = WS.augment_window(
        frames, cfg.model_copy(update={"enabled": False}), np.random.default_rng(5)
    )
    assert off is frames
    # Only vertical shifts by default: a sideways one would move the lane under an unchanged
    # steering label.  A frame of distinct columns shows which way it moved.
    cols = np.broadcast_to(np.arange(W, dtype=np.uint8)[None, None, :, None], (1, H, W, 3))
    still = AugmentConfig(brightness=0.0, contrast=0.0, shift_px=3)
    for seed in range(10):
        out = WS.augment_window(cols, still, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, cols)
    sideways = still.model_copy(update={"shift_x_px": 3})
    moved = [
        not np.array_equal(WS.augment_window(cols, sideways, np.random.default_rng(s)), cols)
        for s in range(10)
    ]
    assert any(moved)


def test_loss_masks_weights_and_burn_in() -> None:
    pred = torch.zeros(1, 4, 2)
    tgt = torch.tensor([[[1.0, 1.0], [1.0, float("nan")], [1.0, 1.0], [1.0, 1.0]]])
    cfg = LossConfig(kind="mse", steering_weight=2.0, throttle_weight=1.0)
    loss, wsum = bc_loss(pred, tgt, cfg)
    assert float(wsum) == 2 * 4 + 1 * 3 and float(loss) == pytest.approx(1.0)
    _, wsum_b = bc_loss(pred, tgt, cfg, burn_in=2)
    assert float(wsum_b) == 2 * 2 + 1 * 2


def test_optimizer_groups_and_schedule() -> None:
    from brain.model import build_policy

    policy = build_policy("pi5")
    groups = split_params(policy)
    muon = {n for n, _ in groups["muon"]}
    assert muon and all(p.ndim == 2 for _, p in groups["muon"])
    assert not any(n.startswith("head.") for n in muon)
    assert not any(n.startswith("encoder.convs.0") for n in muon)
    adam = {n for n, _ in groups["decay"] + groups["no_decay"]}
    assert "encoder.convs.0.weight" in adam and "head.net.4.weight" in adam
    assert all(p.ndim < 2 for _, p in groups["no_decay"])
    opts = build_optimizers(
        policy,
        load_train_config(TINY).optim.model_copy(update={"name": "muon"}),
        100,
        torch.device("cpu"),
    )
    assert opts.names == ["adamw", "muon"]
    assert isinstance(opts.optimizers[1], torch.optim.Muon)
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, 0.1) == pytest.approx(0.1, abs=1e-3)


# --------------------------------------------------------------------------- the loop


@pytest.mark.slow
def test_run_writes_everything_and_is_seeded(
    episodes: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny(episodes, cache_dir, train={"steps": 12})
    a = run_training(cfg, run_dir=tmp_path / "a")
    run_training(cfg, run_dir=tmp_path / "b")
    assert a["status"] == "complete" and a["step"] == 12
    trace = losses(tmp_path / "a")
    assert len(trace) == 12 and all(np.isfinite(v) for _, v in trace)
    assert trace == losses(tmp_path / "b")  # same seed -> same loss trace
    other = run_training(cfg.with_updates(seed=1), run_dir=tmp_path / "c")
    assert losses(tmp_path / "c") != trace and other["step"] == 12

    run = tmp_path / "a"
    for name in ("config.yaml", "metrics.ndjson", "summary.json", "policy.pt"):
        assert (run / name).is_file(), name
    ckpts = run / "checkpoints"
    assert (ckpts / "last.pt").is_file() and (ckpts / "best.pt").is_file()
    assert [p.name for p in sorted(ckpts.glob("step-*.pt"))] == [
        "step-00000010.pt",
        "step-00000012.pt",
    ]
    snap = load_train_config(run / "config.yaml")  # the resolved snapshot is a valid config
    assert snap.model.overrides["feature_dim"] == 16 and "enc_channels" in snap.model.overrides
    recs = [json.loads(x) for x in (run / "metrics.ndjson").read_text().splitlines()]
    train_rec = next(r for r in recs if r["kind"] == "train")
    assert {"step", "loss", "lr", "samples_per_s", "grad_norm"} <= set(train_rec)
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 12] and all("val_loss" in r for r in evals)
    policy = load_policy(run / "policy.pt")
    state, memory = policy.initial_state(1)
    action, _, _ = policy.step(torch.zeros(1, H, W, 3, dtype=torch.uint8), state, memory)
    assert action.shape == (1, 2)


@pytest.mark.slow
def test_resume_is_exact(episodes: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(episodes, cache_dir, augment={"enabled": True})
    straight = run_training(cfg, run_dir=tmp_path / "straight")
    part = run_training(cfg, run_dir=tmp_path / "split", stop_at_step=10)
    assert part["status"] == "stopped" and part["step"] == 10
    with pytest.raises(TrainingError, match="--resume"):
        run_training(cfg, run_dir=tmp_path / "split")
    rest = run_training(cfg, run_dir=tmp_path / "split", resume=True)
    assert straight["step"] == rest["step"] == 20
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    wa, wb = weights(tmp_path / "straight" / "policy.pt"), weights(tmp_path / "split" / "policy.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


RECURRENCE = {"stateful": True, "teacher_forcing": True, "memory_dropout": 0.25}


def recurrent(episodes: Path, cache_dir: Path, **sections: dict) -> TrainConfig:
    """The tiny config with action + motion feedback and the memorization recipe."""
    cfg = tiny(episodes, cache_dir, **sections)
    over = {**cfg.model.overrides, "action_feedback": True, "motion_feedback": True}
    return cfg.with_updates(model={"overrides": over}, recurrence=RECURRENCE)


def test_step_carries_state_freezes_slots_and_feeds_back_executed_actions(
    episodes: Path, cache_dir: Path
) -> None:
    """The recipe's pieces in one optimiser step: a continuing slot starts from its carried
    state, a fresh one from zeros; the first quarter of the slots never write their memory;
    the fed-back action is the executed one."""
    cfg = recurrent(episodes, cache_dir)  # batch 4, memory_dropout 0.25
    torch.manual_seed(0)
    policy = build_policy(cfg.model.preset, **dict(cfg.model.overrides))
    dist = Dist(device=torch.device("cpu"), kind="cpu")
    opts = build_optimizers(policy, cfg.optim, 10, dist.device)
    stepper = Stepper(cfg, dist, policy, opts, check_recurrence(cfg, policy))
    assert stepper.mem_lr_scale is not None and stepper.mem_lr_scale.tolist() == [0, 1, 1, 1]
    b, t = 4, cfg.train.window
    h, w = policy.config.image_hw
    zero_s, zero_m = policy.initial_state(b)
    carry = {"state": torch.full_like(zero_s, 0.5), "memory": torch.full_like(zero_m, 0.25)}
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (b, t, h, w, 3), np.uint8))
    batch = WS.Batch(
        frames=frames,
        labels=torch.zeros(b, t, 2),
        executed=torch.full((b, t, 2), 0.3),
        fresh=torch.tensor([False, True, False, True]),
    )
    _, state, memory, executed, scale = stepper.inputs(batch, carry)
    for j in (0, 2):  # continuing slots: the carried state and memory
        assert torch.equal(state[j], carry["state"][j]) and torch.equal(
            memory[j], carry["memory"][j]
        )
    for j in (1, 3):  # a new episode visit: zeros
        assert torch.equal(state[j], zero_s[j]) and torch.equal(memory[j], zero_m[j])
    assert executed is not None and torch.equal(executed, batch.executed)
    assert scale is stepper.mem_lr_scale

    loss, gn, out = stepper(batch, carry)
    assert out is not None and torch.isfinite(loss) and torch.isfinite(gn)
    assert not out["state"].requires_grad  # detached: truncated BPTT
    assert torch.equal(out["memory"][0], carry["memory"][0])  # frozen slot: memory untouched
    assert all(not torch.equal(out["memory"][j], memory[j]) for j in (1, 2, 3))  # written
    prev = out["state"][:, policy.config.state_layout()["prev_action"]]
    torch.testing.assert_close(prev, torch.full((b, 2), 0.3))  # the executed action, fed back

    # stateless: no carry in, none out
    plain = cfg.with_updates(recurrence={"stateful": False, "teacher_forcing": False})
    stepper = Stepper(plain, dist, policy, opts, check_recurrence(plain, policy))
    _, state, _, executed, _ = stepper.inputs(batch, None)
    assert executed is None and torch.equal(state, zero_s)
    assert stepper(batch, None)[2] is None


@pytest.mark.slow
def test_recurrence_carries_state_and_resumes_exactly(
    episodes: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = recurrent(episodes, cache_dir)
    straight = run_training(cfg, run_dir=tmp_path / "straight")
    run_training(cfg, run_dir=tmp_path / "split", stop_at_step=10)
    rest = run_training(cfg, run_dir=tmp_path / "split", resume=True)
    assert straight["step"] == rest["step"] == 20
    # the carried states are in the checkpoint: without them step 11 would start from zeros
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    wa, wb = weights(tmp_path / "straight" / "policy.pt"), weights(tmp_path / "split" / "policy.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    blob = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    (carry,) = blob["carry"]  # one rank
    state, memory = torch.tensor(carry["state"]), torch.tensor(carry["memory"])
    policy = load_policy(tmp_path / "straight" / "policy.pt")
    assert state.shape == (4, policy.config.state_size)
    # memory dropout: the first of the 4 slots never writes its memory, the others do
    assert not memory[0].any() and memory[1:].abs().sum(dim=1).gt(0).all()
    # teacher forcing: the last tick's fed-back action is the executed one (throttle 0.4),
    # not the label (0.5) nor the policy's own output
    prev = state[:, policy.config.state_layout()["prev_action"]]
    torch.testing.assert_close(prev[:, 1], torch.full((4,), 0.4))


@pytest.mark.slow
def test_recurrence_differs_from_stateless_training(
    episodes: Path, cache_dir: Path, tmp_path: Path
) -> None:
    base = recurrent(episodes, cache_dir, train={"steps": 8, "eval_every": None})
    runs = {
        "recipe": base,
        "stateless": base.with_updates(recurrence={"stateful": False}),
        "free_running": base.with_updates(recurrence={"teacher_forcing": False}),
        "no_dropout": base.with_updates(recurrence={"memory_dropout": 0.0}),
    }
    traces = {}
    for name, cfg in runs.items():
        run_training(cfg, run_dir=tmp_path / name)
        traces[name] = losses(tmp_path / name)
    assert all(np.isfinite(v) for t in traces.values() for _, v in t)
    for name in ("stateless", "free_running", "no_dropout"):  # each switch changes training
        assert traces[name] != traces["recipe"], name


@pytest.mark.slow
def test_recurrence_refuses_what_the_model_cannot_do(
    episodes: Path, cache_dir: Path, tmp_path: Path
) -> None:
    plain = tiny(episodes, cache_dir, train={"steps": 1})
    no_feedback = {**plain.model.overrides, "action_feedback": False, "motion_feedback": False}
    plain = plain.with_updates(model={"overrides": no_feedback})
    with pytest.raises(TrainingError, match="action_feedback"):
        run_training(
            plain.with_updates(recurrence={"teacher_forcing": True}), run_dir=tmp_path / "a"
        )
    no_mem = plain.with_updates(
        model={"overrides": {**plain.model.overrides, "memory": False}},
        recurrence={"memory_dropout": 0.5},
    )
    with pytest.raises(TrainingError, match="has none"):
        run_training(no_mem, run_dir=tmp_path / "b")
    with pytest.raises(TrainingError, match="at least one"):  # 0.1 of 4 windows: none frozen
        run_training(plain.with_updates(recurrence={"memory_dropout": 0.1}), run_dir=tmp_path / "c")
    with pytest.raises(TrainConfigError, match="memory_dropout"):
        parse_train_config({**plain.model_dump(mode="json"), "recurrence": {"memory_dropout": 1.0}})


@pytest.mark.slow
def test_wall_budget_stops_cleanly_then_resumes(
    episodes: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny(episodes, cache_dir, train={"steps": 6})
    s = run_training(cfg, run_dir=tmp_path / "r", max_minutes=1e-6)
    assert s["status"] == "stopped" and "wall budget" in s["stop_reason"] and s["step"] == 1
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
    done = run_training(cfg, run_dir=tmp_path / "r", resume=True)
    assert done["status"] == "complete" and done["step"] == 6


@pytest.mark.slow
def test_muon_bf16_and_tfds_source(episodes: Path, cache_dir: Path, tmp_path: Path) -> None:
    eps = list_episodes(episodes)
    out = tmp_path / "tfds"
    export_tfds(
        eps, out, splits={e.episode_id: ("val" if i < 1 else "train") for i, e in enumerate(eps)}
    )
    cfg = tiny(
        episodes,
        cache_dir,
        data={
            "sources": [
                {"path": str(out), "splits": ["train"], "role": "train"},
                {"path": str(out), "splits": ["val"], "role": "val"},
            ]
        },
        optim={"name": "muon"},
        precision="bf16",
        train={"steps": 4, "eval_every": 2},
    )
    s = run_training(cfg, run_dir=tmp_path / "run")
    assert s["status"] == "complete" and np.isfinite(s["final_train_loss"])
    assert s["episodes_train"] == 3 and s["episodes_val"] == 1
    head = json.loads((tmp_path / "run" / "metrics.ndjson").read_text().splitlines()[0])
    assert set(head["optimizers"]) == {"adamw", "muon"}


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager(
    episodes: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(module, *a, **k):  # compiles "fine", fails at the first call
        def call(*args, **kwargs):
            raise RuntimeError("no C compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = tiny(episodes, cache_dir, compile=True, train={"steps": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = run_training(cfg, run_dir=tmp_path / "run")
    assert s["status"] == "complete" and s["compiled"] is False
    assert any("torch.compile failed" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- processes


def _write_cfg(cfg: TrainConfig, path: Path) -> Path:
    path.write_text(cfg.to_yaml())
    return path


@pytest.mark.slow
def test_cli_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {steps: 1}\n")
    r = subprocess.run(
        [sys.executable, "-m", "cloud_jobs", "train", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "missing required key 'data'" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "cloud_jobs", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "train" in r.stdout and "evaluate" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["plain", "recurrence"])
def test_ddp_two_cpu_processes(
    episodes: Path, cache_dir: Path, tmp_path: Path, recipe: str
) -> None:
    make = recurrent if recipe == "recurrence" else tiny
    cfg = make(episodes, cache_dir, train={"steps": 6, "eval_every": 3})
    path = _write_cfg(cfg, tmp_path / "ddp.yaml")
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "cloud_jobs", "train", "--config", str(path), "--run-dir", str(run_dir),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=100)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world"] == 2 and summary["status"] == "complete"
    assert sorted(x["rank"] for x in summary["ranks"]) == [0, 1]
    assert all(x["step"] == 6 and np.isfinite(x["local_loss"]) for x in summary["ranks"])
    assert summary["ranks_in_sync"]  # identical weights on both ranks
    assert len({x["checksum"] for x in summary["ranks"]}) == 1
    trace = losses(run_dir)  # one metrics file, by rank 0 only: 6 lines, not 12
    assert [s for s, _ in trace] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(v) for _, v in trace)
    head = json.loads((run_dir / "metrics.ndjson").read_text().splitlines()[0])
    assert head["world"] == 2 and head["backend"] == "gloo"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "policy.pt").is_file()
    if recipe == "recurrence":  # both ranks' carried slots are gathered into the checkpoint
        blob = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        assert len(blob["carry"]) == 2
        assert blob["carry"][0]["state"] != blob["carry"][1]["state"]


def _xla_python() -> tuple[str | None, str]:
    """(interpreter with torch_xla, why not).  This one when it has torch_xla, else
    ``CONTINUON_XLA_PYTHON``: torch_xla pins its torch (2.9.0), so CI (``make test``) builds a
    separate ``.venv-xla`` with the ``xla`` extra beside the main environment's newer torch."""
    try:
        import torch_xla  # noqa: F401

        return sys.executable, ""
    except Exception as e:  # ImportError, or an ABI mismatch with the installed torch
        here = f"torch_xla is not importable here ({type(e).__name__}: {e})"
    other = os.environ.get("CONTINUON_XLA_PYTHON")
    if not other:
        return None, f"{here} and CONTINUON_XLA_PYTHON is not set (make test sets it)"
    if not os.access(other, os.X_OK):
        return None, f"{here} and CONTINUON_XLA_PYTHON={other} is not an executable"
    return other, ""


XLA_PYTHON, XLA_SKIP = _xla_python()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(XLA_PYTHON is None, reason=XLA_SKIP)
@pytest.mark.timeout(600)  # XLA compiles the unrolled BPTT graph: ~1-2 min on 2 busy cores
@pytest.mark.parametrize("recipe", ["plain", "recurrence"])
def test_xla_device_on_pjrt_cpu(
    episodes: Path, cache_dir: Path, tmp_path: Path, recipe: str
) -> None:
    """The TPU code path (torch_xla device, PJRT, xm.optimizer_step) on PJRT's CPU client,
    plain and with the memorization recipe (carried state, teacher forcing, memory dropout);
    the checkpoint it writes then loads, steps and exports in this environment."""
    # Short windows and few steps: each new graph shape costs an XLA compile.
    make = recurrent if recipe == "recurrence" else tiny
    steps = 3 if recipe == "recurrence" else 2  # the third step continues carried state
    cfg = make(
        episodes,
        cache_dir,
        device="xla",
        train={"steps": steps, "window": 4, "stride": 4, "eval_every": None},
    )
    path = _write_cfg(cfg, tmp_path / "xla.yaml")
    env = dict(os.environ, PJRT_DEVICE="CPU")
    env.pop("XLA_FLAGS", None)
    cmd = [
        str(XLA_PYTHON),
        "-m",
        "cloud_jobs",
        "train",
        "--config",
        str(path),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=580)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "complete" and "xla" in s["device"] and np.isfinite(s["final_train_loss"])
    assert [st for st, _ in losses(tmp_path / "run")] == list(range(1, steps + 1))
    if recipe == "recurrence":  # the carried slots reach the checkpoint from the device
        blob = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
        (carry,) = blob["carry"]
        memory = torch.tensor(carry["memory"])
        assert memory.shape[0] == 4 and not memory[0].any() and memory[1:].abs().sum() > 0
    policy = load_policy(tmp_path / "run" / "policy.pt").eval()
    assert all(torch.isfinite(v).all() for v in policy.state_dict().values())
    state, memory = policy.initial_state(1)
    h, w = policy.config.image_hw
    with torch.no_grad():
        action, _, _ = policy.step(torch.zeros(1, h, w, 3, dtype=torch.uint8), state, memory)
    assert torch.isfinite(action).all()
    export_onnx(policy, tmp_path / "xla.onnx")

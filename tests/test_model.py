"""The policy network (brain/model): shapes, state, CMS timing, delta-rule memory, ONNX export."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # export writes metadata with the onnx package

import onnxruntime as ort  # noqa: E402

from brain.model import (  # noqa: E402
    IMAGE_HW,
    ModelConfig,
    build_policy,
    delta_rule_update,
    export_onnx,
    load_policy,
    make_config,
    memory_read,
    preprocess_frame,
    save_policy,
)
from brain.policy import load_model  # noqa: E402
from brain.policy.onnx_model import LoadedModel  # noqa: E402

pytestmark = pytest.mark.torch

H, W = IMAGE_HW


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, H, W, 3), dtype=torch.uint8, generator=g)


def _policy(preset: str = "pi5", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_policy(preset, **overrides).eval()


@pytest.fixture(scope="module")
def pi5():
    return _policy()


# --- shapes, sizes, config ----------------------------------------------------------------------


def test_step_shapes_and_dtypes(pi5) -> None:
    cfg = pi5.config
    state, memory = pi5.initial_state(3)
    assert state.shape == (3, cfg.state_size) and memory.shape == (3, cfg.memory_size)
    assert state.dtype == memory.dtype == torch.float32
    assert not state.any() and not memory.any()
    with torch.no_grad():
        action, s2, m2 = pi5.step(_images(3), state, memory)
    assert action.shape == (3, 2) and action.dtype == torch.float32
    assert s2.shape == state.shape and m2.shape == memory.shape
    assert s2.dtype == m2.dtype == torch.float32
    assert (action.abs() <= 1).all() and torch.isfinite(action).all()


def test_parameter_counts() -> None:
    n_pi5 = _policy("pi5").num_parameters()
    n_large = _policy("large").num_parameters()
    print(f"\nparameters: pi5 {n_pi5:,}  large {n_large:,}")
    assert 1_000_000 <= n_pi5 <= 2_000_000
    assert n_large > 3 * n_pi5
    tiny = build_policy("tiny")
    assert tiny.config.image_hw == (48, 64) and tiny.num_parameters() < 50_000


def test_config_json_roundtrip_and_seeded_build() -> None:
    p1, p2 = _policy(seed=7), _policy(seed=7)
    blob = json.loads(json.dumps(dataclasses.asdict(p1.config)))
    assert ModelConfig.from_dict(blob) == p1.config
    for (k1, v1), (k2, v2) in zip(p1.state_dict().items(), p2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert build_policy(config=p1.config).config == p1.config
    assert build_policy(config=p1.config, cms_levels=1).config.periods == (1,)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**blob, "bogus": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        build_policy("nope")


def test_config_without_newer_fields_builds_the_architecture_it_was_trained_with() -> None:
    """Checkpoints written before enc_norm/activation/input_norm existed hold GroupNorm,
    SiLU and mean/std input weights: they must load as that, not as today's defaults."""
    blob = dataclasses.asdict(make_config("pi5", enc_kernels=(5, 3, 3, 3, 3)))
    for key in ("enc_norm", "activation", "input_norm"):
        blob.pop(key)
    cfg = ModelConfig.from_dict(json.loads(json.dumps(blob)))
    assert (cfg.enc_norm, cfg.activation, cfg.input_norm) == ("group", "silu", "meanstd")
    old = build_policy(config=cfg)
    kinds = {type(m).__name__ for m in old.modules()}
    assert {"GroupNorm", "SiLU"} <= kinds and not {"BatchNorm2d", "ReLU"} & kinds
    assert type(old.encoder.convs[0]).__name__ == "Conv2d" and old.encoder.convs[0].bias is not None
    new = _policy()
    kinds = {type(m).__name__ for m in new.modules()}
    assert {"BatchNorm2d", "ReLU"} <= kinds and not {"GroupNorm", "SiLU"} & kinds
    with pytest.raises(ValueError, match="enc_norm='layer' must be one of"):
        make_config("pi5", enc_norm="layer")


def test_export_leaves_no_normalisation_op_on_the_image(tmp_path: Path) -> None:
    """BatchNorm folds into the convs and the input scale into the first conv's weights:
    between the uint8 image and the first Conv there is only a layout change and a cast."""
    import onnx

    p = _policy()
    export_onnx(p, tmp_path / "p.onnx")
    g = onnx.load(str(tmp_path / "p.onnx")).graph
    ops = [n.op_type for n in g.node]
    assert "BatchNormalization" not in ops
    producer = {o: n for n in g.node for o in n.output}
    first = next(n for n in g.node if n.op_type == "Conv")
    chain, name = [], first.input[0]
    while name in producer:
        chain.append(producer[name].op_type)
        name = producer[name].input[0]
    assert name == "image" and set(chain) <= {"Transpose", "Cast"}, chain


def test_save_load_roundtrip(tmp_path: Path) -> None:
    p = _policy(cms_levels=1, memory=False, motion_feedback=False)
    p.set_memorize(lr=0.5, threshold=0.1)
    save_policy(p, tmp_path / "p.pt")
    q = load_policy(tmp_path / "p.pt").eval()
    assert q.config == p.config and q.config.mem_lr == 0.5
    state, memory = p.initial_state(2)
    img = _images(2)
    with torch.no_grad():
        for a, b in zip(p.step(img, state, memory), q.step(img, state, memory), strict=True):
            assert torch.equal(a, b)


# --- recurrence -----------------------------------------------------------------------------------


def test_state_is_carried_and_reset(pi5) -> None:
    img = _images(1)
    with torch.no_grad():
        state, memory = pi5.initial_state(1)
        a0, state, memory = pi5.step(img, state, memory)
        a1, state, memory = pi5.step(img, state, memory)
        assert not torch.equal(a0, a1), "memory is active: the same frame twice must differ"
        assert memory.abs().sum() > 0
        state, memory = pi5.initial_state(1)
        again, _, _ = pi5.step(img, state, memory)
    assert torch.equal(again, a0)


def test_cms_alone_carries_state() -> None:
    # only the CMS carries context
    p = _policy(memory=False, action_feedback=False, motion_feedback=False)
    img = _images(1)
    actions = []
    with torch.no_grad():
        state, memory = p.initial_state(1)
        for _ in range(5):
            a, state, memory = p.step(img, state, memory)
            actions.append(a)
    assert torch.equal(actions[0], actions[1])  # no level has updated yet
    assert not torch.equal(actions[0], actions[4])  # level 1 (period 4) updated at tick 3


def test_cms_levels_update_only_on_their_ticks(pi5) -> None:
    cfg = pi5.config
    layout = cfg.state_layout()
    imgs = _images(40, seed=3)
    prev, memory = pi5.initial_state(1)
    with torch.no_grad():
        feats = pi5.encode(imgs)  # one batched encoder call; the ticks run the recurrent core
        for t in range(40):
            _, state, memory = pi5.core(feats[t : t + 1], prev, memory)
            assert state[0, layout["tick"]].item() == (t + 1) % cfg.tick_cycle
            for lvl, p in enumerate(cfg.periods):
                out, acc = layout[f"cms{lvl}.out"], layout[f"cms{lvl}.acc"]
                changed = not torch.equal(state[:, out], prev[:, out])
                assert changed == (t % p == p - 1), (lvl, t)
                if t % p == p - 1:
                    assert not state[:, acc].any()  # accumulator restarts after an update
                else:
                    assert state[:, acc].abs().sum() > 0
            prev = state


def test_forward_sequence_equals_repeated_step(pi5) -> None:
    imgs = _images(2, 7, seed=1)
    state0, memory0 = pi5.initial_state(2)
    with torch.no_grad():
        actions, s_seq, m_seq = pi5.forward_sequence(imgs, state0, memory0)
        state, memory, stepped = state0, memory0, []
        for t in range(7):
            a, state, memory = pi5.step(imgs[:, t], state, memory)
            stepped.append(a)
    assert actions.shape == (2, 7, 2)
    torch.testing.assert_close(actions, torch.stack(stepped, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_seq, state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m_seq, memory, atol=1e-5, rtol=1e-5)


def test_forward_sequence_backprop_reaches_every_part() -> None:
    torch.manual_seed(0)
    p = build_policy("pi5").train()
    state, memory = p.initial_state(2)
    actions, state, memory = p.forward_sequence(_images(2, 17, seed=2), state, memory)
    (actions.square().mean() + state.square().mean()).backward()
    for name in ("encoder.convs.0.weight", "memory.qkv.weight", "memory.gates.weight"):
        assert p.get_parameter(name).grad.abs().sum() > 0, name
    for lvl in range(p.config.cms_levels):
        assert p.cms.levels[lvl].fc1.weight.grad.abs().sum() > 0, lvl


# --- delta-rule memory ----------------------------------------------------------------------------


def _kv(dk: int = 16, dv: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(1, dk, generator=g), dim=-1)
    v = torch.randn(1, dv, generator=g)
    return k, v, torch.zeros(1, dv, dk)


def test_delta_rule_stores_association() -> None:
    k, v, mem = _kv()
    one, high = torch.ones(1, 1), torch.full((1, 1), 0.95)
    for _ in range(5):
        mem, _ = delta_rule_update(mem, k, v, one, high)
    torch.testing.assert_close(memory_read(mem, k), v, atol=1e-5, rtol=1e-5)
    # a second association with an orthogonal key leaves the first intact
    k2 = torch.nn.functional.normalize(torch.randn(1, 16) - (torch.randn(1, 16) @ k.T) * k, dim=-1)
    k2 = torch.nn.functional.normalize(k2 - (k2 @ k.T) * k, dim=-1)
    v2 = torch.randn(1, 8)
    mem, _ = delta_rule_update(mem, k2, v2, one, one)
    torch.testing.assert_close(memory_read(mem, k2), v2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(memory_read(mem, k), v, atol=1e-4, rtol=1e-4)


def test_delta_rule_lr_zero_and_threshold() -> None:
    k, v, mem = _kv()
    one, half = torch.ones(1, 1), torch.full((1, 1), 0.5)
    mem, surprise = delta_rule_update(mem, k, v, half, one)
    torch.testing.assert_close(surprise, v.norm(dim=-1, keepdim=True))
    frozen, _ = delta_rule_update(mem, k, -v, half, one, lr=0.0)
    assert torch.equal(frozen, mem)  # lr 0: no write and no decay
    # stored exactly; a slightly different value is a small surprise
    v_near = v + 0.01 * torch.randn(1, 8)
    kept, s = delta_rule_update(mem, k, v_near, half, one, threshold=0.5)
    assert s.item() < 0.5 and torch.equal(kept, mem)
    written, s = delta_rule_update(mem, k, 3 * v, half, one, threshold=0.5)
    assert s.item() > 0.5 and not torch.equal(written, mem)


def test_memorize_knobs_in_policy() -> None:
    p = _policy()
    img = _images(1)
    with torch.no_grad():
        state, memory = p.initial_state(1)
        _, state, memory = p.step(img, state, memory)
        p.set_memorize(lr=0.0)
        _, _, frozen = p.step(_images(1, seed=5), state, memory)
        assert torch.equal(frozen, memory)
        p.set_memorize(lr=1.0, threshold=1e6)
        _, _, gated = p.step(_images(1, seed=5), state, memory)
        assert torch.equal(gated, memory)
        p.set_memorize(threshold=0.0)
        _, _, written = p.step(_images(1, seed=5), state, memory)
        assert not torch.equal(written, memory)
    assert p.config.mem_lr == 1.0 and p.config.mem_threshold == 0.0


def test_per_sample_memory_lr_is_memory_dropout() -> None:
    """``mem_lr_scale`` freezes some samples of a batch exactly as ``set_memorize(lr=0)``
    freezes a whole policy, leaving the others memorizing (training's memory dropout)."""
    p = _policy(action_feedback=True, motion_feedback=True)
    imgs = _images(2, 4)
    with torch.no_grad():
        mixed, _, mem = p.forward_sequence(
            imgs, *p.initial_state(2), mem_lr_scale=torch.tensor([0.0, 1.0])
        )
        on, _, mem_on = p.forward_sequence(imgs, *p.initial_state(2))
        p.set_memorize(lr=0.0)
        off, _, _ = p.forward_sequence(imgs, *p.initial_state(2))
    torch.testing.assert_close(mixed[0], off[0])
    torch.testing.assert_close(mixed[1], on[1])
    assert not mem[0].any() and torch.equal(mem[1], mem_on[1]) and mem[1].any()
    assert not torch.allclose(on[0], off[0])  # the memory does change the actions


# --- ablations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"memory": False, "motion_feedback": False},
        {"cms_levels": 1},
        {"cms_levels": 1, "memory": False, "motion_feedback": False},
        {"depth": True},
        {"action_dim": 7, "action_tanh": False},
        {"enc_norm": "none", "keypoints": 0},
        {"enc_norm": "group", "activation": "silu", "input_norm": "meanstd"},
        {"action_feedback": False, "motion_feedback": False},
        {"action_feedback": True, "motion_feedback": False},
        {"motion_feedback": False, "memory": False, "cms_levels": 1},
        {"action_feedback": False, "motion_feedback": True},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_ablations_build_and_run(overrides) -> None:
    p = _policy(**overrides)
    ref = _policy()
    cfg = p.config
    state, memory = p.initial_state(2)
    assert memory.shape == ref.initial_state(2)[1].shape or "mem_key_dim" in overrides
    imgs = _images(2, 3)
    depths = None
    if cfg.depth:
        depths = torch.randint(0, 6000, (2, 3, H, W), dtype=torch.int32).to(torch.uint16)
    with torch.no_grad():
        actions, state, memory = p.forward_sequence(imgs, state, memory, depths=depths)
        a, _, _ = p.step(
            imgs[:, 0], *p.initial_state(2), depth=None if depths is None else depths[:, 0]
        )
    assert actions.shape == (2, 3, cfg.action_dim) and a.shape == (2, cfg.action_dim)
    assert torch.isfinite(actions).all()
    torch.testing.assert_close(a, actions[:, 0], atol=1e-5, rtol=1e-5)
    if not cfg.memory:
        assert not memory.any()
    if cfg.depth:
        with pytest.raises(ValueError, match="depth"):
            p.step(imgs[:, 0], *p.initial_state(2))


def test_motion_feedback_keeps_the_previous_features() -> None:
    p = _policy()  # the preset feeds both back
    assert p.config.action_feedback and p.config.motion_feedback
    ref = _policy(motion_feedback=False)
    cfg = p.config
    lay = cfg.state_layout()
    assert cfg.state_size == ref.config.state_size + cfg.feature_dim
    assert lay["prev_features"] == slice(ref.config.state_size, cfg.state_size)
    assert lay["prev_action"] == ref.config.state_layout()["prev_action"]
    imgs = _images(2, 4)
    with torch.no_grad():
        state, memory = p.initial_state(2)
        a, s1, m1 = p.step(imgs[:, 0], state, memory)
        torch.testing.assert_close(s1[:, lay["prev_features"]], p.encode(imgs[:, 0]))
        torch.testing.assert_close(s1[:, lay["prev_action"]], a)
        # what the view was a tick ago changes what the memory writes (and so the action)
        s_other = s1.clone()
        s_other[:, lay["prev_features"]] = p.encode(imgs[:, 2])
        _, _, m_a = p.step(imgs[:, 1], s1, m1)
        _, _, m_b = p.step(imgs[:, 1], s_other, m1)
        assert not torch.allclose(m_a, m_b)
        # teacher forcing writes the executed action into its own slot, not over the features
        executed = torch.full((2, 4, cfg.action_dim), 0.3)
        _, s_tf, _ = p.forward_sequence(imgs, *p.initial_state(2), executed_actions=executed)
        torch.testing.assert_close(s_tf[:, lay["prev_action"]], executed[:, -1])
        torch.testing.assert_close(s_tf[:, lay["prev_features"]], p.encode(imgs[:, 3]))
    with pytest.raises(ValueError, match="motion_feedback"):
        _policy(motion_feedback=True, memory=False)


def test_action_feedback_state_and_teacher_forcing() -> None:
    p = _policy(motion_feedback=False)
    ref = _policy(action_feedback=False, motion_feedback=False)
    cfg = p.config
    assert cfg.state_size == ref.config.state_size + cfg.action_dim
    assert cfg.state_layout()["prev_action"] == slice(ref.config.state_size, cfg.state_size)
    assert "prev_action" not in ref.config.state_layout()
    with torch.no_grad():
        p.action_in.weight.normal_(0.0, 1.0)
    imgs = _images(2, 4)
    with torch.no_grad():
        state, memory = p.initial_state(2)
        a, s1, _ = p.step(imgs[:, 0], state, memory)
        torch.testing.assert_close(s1[:, cfg.state_layout()["prev_action"]], a)
        # the previous action changes the next output (through memory and CMS input)
        s_other = s1.clone()
        s_other[:, -cfg.action_dim :] = 0.7
        b1, _, _ = p.step(imgs[:, 1], s1, memory)
        b2, _, _ = p.step(imgs[:, 1], s_other, memory)
        assert not torch.allclose(b1, b2)
        # teacher forcing: the given executed actions replace the fed-back ones
        executed = torch.full((2, 4, cfg.action_dim), 0.3)
        acts, state_tf, _ = p.forward_sequence(imgs, *p.initial_state(2), executed_actions=executed)
        acts_free, _, _ = p.forward_sequence(imgs, *p.initial_state(2))
        torch.testing.assert_close(acts[:, 0], acts_free[:, 0])
        assert not torch.allclose(acts[:, 1:], acts_free[:, 1:])
        torch.testing.assert_close(state_tf[:, -cfg.action_dim :], executed[:, -1])
    with pytest.raises(ValueError, match="action_feedback"):
        ref.forward_sequence(imgs, *ref.initial_state(2), executed_actions=executed)


def test_command_reaches_only_the_memory_without_cms_action_feedback() -> None:
    p = _policy(cms_action_feedback=False)
    assert p.action_in is None and p.motion_in is not None
    cfg = p.config
    assert cfg.state_layout()["prev_action"].stop - cfg.state_layout()["prev_action"].start == 2
    imgs = _images(2, 3)
    with torch.no_grad():
        state, memory = p.initial_state(2)
        _, s1, m1 = p.step(imgs[:, 0], state, memory)
        s_other = s1.clone()
        s_other[:, cfg.state_layout()["prev_action"]] = 0.7
        # Memorizing, the command is written into the memory and changes the action ...
        a1, _, _ = p.step(imgs[:, 1], s1, m1)
        a2, _, _ = p.step(imgs[:, 1], s_other, m1)
        assert not torch.allclose(a1, a2)
        # ... frozen from the start (the memory stays empty), nothing else sees it.
        p.set_memorize(lr=0.0)
        f1, _, _ = p.step(imgs[:, 1], s1, memory)
        f2, _, _ = p.step(imgs[:, 1], s_other, memory)
        torch.testing.assert_close(f1, f2)
        # Teacher forcing still feeds the executed actions back.
        executed = torch.full((2, 3, cfg.action_dim), 0.3)
        _, st, _ = p.forward_sequence(imgs, *p.initial_state(2), executed_actions=executed)
        torch.testing.assert_close(st[:, cfg.state_layout()["prev_action"]], executed[:, -1])


# --- ONNX -----------------------------------------------------------------------------------------


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"memory": False, "cms_levels": 1, "motion_feedback": False},
        {"action_feedback": False, "motion_feedback": False},
        {"cms_action_feedback": False},
        {"enc_norm": "group", "activation": "silu", "input_norm": "meanstd"},
    ],
    ids=["pi5", "ablated", "no_feedback", "command_to_memory_only", "groupnorm_silu_meanstd"],
)
def test_onnx_export_parity_and_contract(tmp_path: Path, overrides) -> None:
    p = _policy(**overrides)
    g = torch.Generator().manual_seed(3)
    for m in p.modules():  # trained-looking BatchNorm statistics, so folding them is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    if p.action_in is not None:  # zero-initialised: make the feedback path matter
        with torch.no_grad():
            p.action_in.weight.normal_(0.0, 1.0)
    path = tmp_path / "policy.onnx"
    export_onnx(p, path, version="test-1")
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["image", "state", "memory"]
    assert [o.name for o in sess.get_outputs()][:3] == ["action", "state_out", "memory_out"]
    assert sess.get_inputs()[0].type == "tensor(uint8)"

    imgs = _images(20, seed=4)
    state, memory = p.initial_state(1)
    worst = 0.0
    with torch.no_grad():
        for t in range(20):  # > one period of every CMS level
            ref = p.step(imgs[t : t + 1], state, memory)
            got = sess.run(
                None,
                {
                    "image": imgs[t : t + 1].numpy(),
                    "state": state.numpy(),
                    "memory": memory.numpy(),
                },
            )
            worst = max(
                worst, *(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))
            )
            state, memory = ref[1], ref[2]
    print(f"\nONNX parity ({overrides or 'pi5'}): max |onnxruntime - torch| = {worst:.2e}")
    assert worst <= 1e-4

    # the daemon's loader accepts it and steps it (resizing a full-size camera frame)
    model = load_model(path, action_names=["steering", "throttle"])
    assert model.version == "test-1" and model.input_size == (H, W)
    assert {s.name: s.shape for s in model.recurrent} == {
        "state": (1, p.config.state_size),
        "memory": (1, p.config.memory_size),
    }
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rec = None
    for _ in range(3):
        action, rec = model.step(frame, rec)
        assert action.shape == (2,) and np.isfinite(action).all()
    with torch.no_grad():
        small = torch.from_numpy(preprocess_frame(frame))[None]
        s, m = p.initial_state(1)
        for _ in range(3):
            ref_a, s, m = p.step(small, s, m)
    np.testing.assert_allclose(action, ref_a[0].numpy(), atol=1e-4)


def test_preprocess_frame_matches_runner() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    runner = LoadedModel.prepare_image(type("M", (), {"input_size": IMAGE_HW})(), frame)[0]
    assert np.array_equal(preprocess_frame(frame), runner)
    same = frame[:H, :W]
    assert np.array_equal(preprocess_frame(same), same)


@pytest.mark.slow
def test_onnx_step_latency_pi5(tmp_path: Path) -> None:
    path = tmp_path / "pi5.onnx"
    export_onnx(_policy(), path)
    sess = _session(path)
    feeds = {
        "image": _images(1).numpy(),
        "state": np.zeros(sess.get_inputs()[1].shape, np.float32),
        "memory": np.zeros(sess.get_inputs()[2].shape, np.float32),
    }
    for _ in range(20):
        sess.run(None, feeds)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    p50, p90 = np.percentile(times, [50, 90]) * 1e3
    print(f"\npi5 onnxruntime step, 1 thread: p50 {p50:.2f} ms, p90 {p90:.2f} ms")
    assert p50 < 100  # a sanity bound only; the target (<= 3 ms here) is reported, not asserted

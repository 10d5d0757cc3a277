"""The policy runner: model contract checks, carried state, deadline, NaN, hot swap, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("onnx")  # the graph builders need the dev extra

from brain.policy import (
    InferenceResult,
    LoadedModel,
    PolicyLoadError,
    PolicyRunner,
    default_deadline_s,
    load_model,
)
from brain.policy.testing import FaultyModel, build_dummy_policy, reference_step
from tests.emulation import wall

H, W = 120, 160


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policies")
    build_dummy_policy(d / "a.onnx", bias=0.0, version="model-a", action_names="steering,throttle")
    build_dummy_policy(d / "b.onnx", bias=5.0, version="model-b", seed=1)
    build_dummy_policy(d / "nan.onnx", nan=True)
    return d


@pytest.fixture(scope="module")
def model_a(models_dir: Path) -> LoadedModel:
    return load_model(models_dir / "a.onnx")


@pytest.fixture(scope="module")
def model_b(models_dir: Path) -> LoadedModel:
    return load_model(models_dir / "b.onnx")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def runner_factory():
    made: list[PolicyRunner] = []

    def make(model: LoadedModel | None = None, **kw) -> PolicyRunner:
        r = PolicyRunner(model, **kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def manual_rollout(path: Path, image: np.ndarray, steps: int) -> list[np.ndarray]:
    """Actions from a bare onnxruntime session that feeds X_out back as X by hand."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((1, 32), np.float32)
    memory = np.zeros((1, 64), np.float32)
    actions = []
    for _ in range(steps):
        action, state, memory = sess.run(
            ["action", "state_out", "memory_out"],
            {"image": image[None], "state": state, "memory": memory},
        )
        actions.append(action[0].astype(np.float64))
    return actions


# ---------------------------------------------------------------------------- loading / contract


def test_load_reads_contract_and_metadata(models_dir: Path, model_a: LoadedModel) -> None:
    assert model_a.input_size == (H, W)
    assert model_a.action_size == 2
    assert [(s.name, s.shape, s.output_name) for s in model_a.recurrent] == [
        ("state", (1, 32), "state_out"),
        ("memory", (1, 64), "memory_out"),
    ]
    assert model_a.version == "model-a"
    assert model_a.action_names == ("steering", "throttle")
    assert model_a.path == models_dir / "a.onnx"
    # Without a `version` in the metadata the version is the file's sha256 prefix.
    p = build_dummy_policy(models_dir / "noversion.onnx", state_size=0, memory_size=0)
    m = load_model(p)
    assert m.version == m.sha256[:12] and len(m.sha256) == 64
    assert m.recurrent == ()
    # Matching robot names are accepted.
    load_model(models_dir / "a.onnx", action_names=("steering", "throttle"))


def test_missing_image_input_is_named(tmp_path: Path) -> None:
    p = build_dummy_policy(tmp_path / "m.onnx", image_name="img")
    with pytest.raises(PolicyLoadError, match=r"no input named 'image'") as exc:
        load_model(p)
    assert str(p) in str(exc.value) and "img" in str(exc.value)


def test_recurrent_input_without_output_is_named(tmp_path: Path) -> None:
    p = build_dummy_policy(tmp_path / "m.onnx", recurrent_output_suffix="_next")
    with pytest.raises(PolicyLoadError, match=r"'state' has no matching output 'state_out'") as exc:
        load_model(p)
    assert str(p) in str(exc.value)


def test_corrupt_and_missing_files(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" + bytes(range(256)) * 4)
    with pytest.raises(PolicyLoadError, match=r"not a loadable ONNX model") as exc:
        load_model(bad)
    assert str(bad) in str(exc.value)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((models_dir / "a.onnx").read_bytes()[:500])
    with pytest.raises(PolicyLoadError, match=str(truncated)):
        load_model(truncated)
    with pytest.raises(PolicyLoadError, match=r"no such file"):
        load_model(tmp_path / "absent.onnx")


def test_wrong_image_dtype_dynamic_dims_and_action_names(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"'image' must be uint8"):
        load_model(build_dummy_policy(tmp_path / "f.onnx", image_dtype="float32"))
    with pytest.raises(PolicyLoadError, match=r"dynamic dimension 'state_dim' at axis 1"):
        load_model(build_dummy_policy(tmp_path / "d.onnx", dynamic_state=True))
    # A dynamic batch dim is allowed and fed as 1.
    m = load_model(build_dummy_policy(tmp_path / "n.onnx", batch_dim="N"))
    assert m.recurrent[0].shape == (1, 32)
    named = build_dummy_policy(tmp_path / "names.onnx", action_names="throttle,steering")
    with pytest.raises(
        PolicyLoadError, match=r"this robot's actions are \['steering', 'throttle'\]"
    ):
        load_model(named, action_names=("steering", "throttle"))
    with pytest.raises(PolicyLoadError, match=r"outputs 3 actions but this robot has 2"):
        load_model(build_dummy_policy(tmp_path / "a3.onnx", action_size=3), action_names=["s", "t"])
    with pytest.raises(PolicyLoadError, match=r"has 1 entries but the model outputs 2"):
        load_model(build_dummy_policy(tmp_path / "bad.onnx", action_names="steering"))


def test_step_matches_reference_and_resizes(model_a: LoadedModel, image: np.ndarray) -> None:
    action, state = model_a.step(image, None)
    ref_a, ref_s, ref_m = reference_step(image, np.zeros((1, 32)), np.zeros((1, 64)))
    assert action.dtype == np.float64 and action.shape == (2,)
    np.testing.assert_allclose(action, ref_a, atol=1e-5)
    np.testing.assert_allclose(state["state"], ref_s, atol=1e-5)
    np.testing.assert_allclose(state["memory"], ref_m, atol=1e-5)
    big = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    small = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(model_a.step(big)[0], model_a.step(small)[0])
    with pytest.raises(ValueError, match="uint8"):
        model_a.step(image.astype(np.float32))


# ---------------------------------------------------------------------------- runner basics


@pytest.mark.timing
def test_state_is_carried_between_ticks(
    runner_factory, models_dir: Path, model_a: LoadedModel, image: np.ndarray
) -> None:
    runner = runner_factory(model_a, deadline_s=1.0)
    results = [runner.infer(image, time.monotonic()) for _ in range(5)]
    assert all(isinstance(r, InferenceResult) for r in results)
    actions = [r.action for r in results]
    # Same image, different actions: the state changed between ticks.
    assert np.abs(actions[0] - actions[1]).max() > 1e-3
    expected = manual_rollout(models_dir / "a.onnx", image, 5)
    for got, want in zip(actions, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert [r.tick_seq for r in results] == [1, 2, 3, 4, 5]
    assert {r.model_version for r in results} == {"model-a"}
    assert all(0 < r.compute_s <= r.latency_s < wall(1.0) for r in results)


def test_reset_state_returns_to_initial_behaviour(
    runner_factory, model_a: LoadedModel, image: np.ndarray
) -> None:
    runner = runner_factory(model_a, deadline_s=1.0)
    first = runner.infer(image, 0.0).action
    second = runner.infer(image, 0.0).action
    assert not np.allclose(first, second)
    runner.reset_state()
    np.testing.assert_array_equal(runner.infer(image, 0.0).action, first)
    np.testing.assert_array_equal(runner.infer(image, 0.0).action, second)
    assert all(not v.any() for v in model_a.initial_recurrent().values())


def test_no_model_and_not_started(model_a: LoadedModel, image: np.ndarray, runner_factory) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        PolicyRunner(model_a).infer(image, 0.0)
    # The deadline is not under test here: generous, so that a slow (emulated) first
    # inference after the swap is not a miss.
    runner = runner_factory(None, deadline_s=wall(1.0))
    assert runner.infer(image, 0.0) is None
    assert runner.stats()["no_model"] == 1
    # A first model can be installed by swap.
    assert runner.swap(model_a).wait(wall(1.0)) == 1
    assert runner.infer(image, 0.0).model_version == "model-a"


# ---------------------------------------------------------------------------- faults


def test_deadline_miss_then_recovers_and_keeps_late_state(
    runner_factory, models_dir: Path, model_a: LoadedModel, image: np.ndarray
) -> None:
    slow = FaultyModel.wrap(model_a, delay_s=0.25, delay_on={1})
    runner = runner_factory(slow, deadline_s=0.05)
    assert runner.infer(image, 0.0) is not None  # call 0: fast
    t0 = time.monotonic()
    assert runner.infer(image, 0.0) is None  # call 1: 250 ms > 50 ms deadline
    waited = time.monotonic() - t0
    assert 0.045 <= waited < 0.2
    # The worker is still busy with the late run: this tick misses too, and its
    # frame is cancelled (never run later).
    assert runner.infer(image, 0.0) is None
    time.sleep(0.3)
    r = runner.infer(image, 0.0)
    assert r is not None and r.tick_seq == 4
    st = runner.stats()
    assert st["deadline_misses"] == 2 and st["cancelled"] == 1 and st["runs"] == 3
    # The late run's state was carried forward: this is the 3rd step of a rollout.
    np.testing.assert_allclose(
        r.action, manual_rollout(models_dir / "a.onnx", image, 3)[2], atol=1e-6
    )


def test_hung_model_costs_one_deadline_per_tick(
    runner_factory, model_a: LoadedModel, image: np.ndarray
) -> None:
    release = threading.Event()
    hung = FaultyModel.wrap(model_a, on_call=lambda i: release.wait(10) if i == 0 else None)
    runner = runner_factory(hung, deadline_s=0.02)
    t0 = time.monotonic()
    assert all(runner.infer(image, 0.0) is None for _ in range(5))
    assert time.monotonic() - t0 < 5 * 0.02 + 0.15
    assert runner.stats()["deadline_misses"] == 5
    release.set()
    deadline = time.monotonic() + 2.0
    while (r := runner.infer(image, 0.0)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r is not None


def test_nan_output_is_dropped_and_resets_state(
    runner_factory, models_dir: Path, model_a: LoadedModel, image: np.ndarray
) -> None:
    faulty = FaultyModel.wrap(model_a, nan_on={2})
    runner = runner_factory(faulty, deadline_s=1.0)
    first = runner.infer(image, 0.0).action
    runner.infer(image, 0.0)
    assert runner.recurrent_state()["state"].any()
    assert runner.infer(image, 0.0) is None
    st = runner.stats()
    assert st["nan_outputs"] == 1 and st["deadline_misses"] == 0 and st["errors"] == 0
    assert not any(v.any() for v in runner.recurrent_state().values())
    # Next tick starts over from zeros: same action as the very first tick.
    np.testing.assert_array_equal(runner.infer(image, 0.0).action, first)

    # A graph whose action is always NaN never gets through.
    nan_runner = runner_factory(load_model(models_dir / "nan.onnx"), deadline_s=1.0)
    assert all(nan_runner.infer(image, 0.0) is None for _ in range(3))
    assert nan_runner.stats()["nan_outputs"] == 3


def test_inference_error_is_counted(
    runner_factory, model_a: LoadedModel, image: np.ndarray
) -> None:
    runner = runner_factory(FaultyModel.wrap(model_a, raise_on={1}), deadline_s=1.0)
    assert runner.infer(image, 0.0) is not None
    assert runner.infer(image, 0.0) is None
    assert runner.infer(image, 0.0) is not None
    # A wrong image is an error too, not a crash of the worker.
    assert runner.infer(np.zeros((10, 10), np.uint8), 0.0) is None
    st = runner.stats()
    assert st["errors"] == 2 and "HxWx3" in st["last_error"]
    assert runner.infer(image, 0.0) is not None


# ---------------------------------------------------------------------------- hot swap


def test_swap_at_200hz_switches_exactly_once_without_skipping(
    runner_factory, model_a: LoadedModel, model_b: LoadedModel, image: np.ndarray
) -> None:
    runner = runner_factory(model_a, deadline_s=0.1)
    results: list[InferenceResult | None] = []
    stop = threading.Event()

    def control_loop() -> None:
        period = 0.005
        nxt = time.monotonic()
        while not stop.is_set():
            results.append(runner.infer(image, time.monotonic()))
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    loop = threading.Thread(target=control_loop)
    loop.start()
    try:
        time.sleep(0.3)
        ticket = runner.swap(model_b)
        seq = ticket.wait(2.0)
        time.sleep(0.3)
    finally:
        stop.set()
        loop.join()

    assert seq is not None and ticket.applied
    assert len(results) > 60
    assert all(r is not None for r in results), "a tick returned no action"
    assert [r.tick_seq for r in results] == list(range(1, len(results) + 1))
    versions = [r.model_version for r in results]
    first_b = versions.index("model-b")
    assert versions[:first_b] == ["model-a"] * first_b and first_b > 10
    assert versions[first_b:] == ["model-b"] * (len(versions) - first_b)
    assert results[first_b].tick_seq == seq
    assert all(np.abs(r.action).max() <= 1.0 for r in results[:first_b])
    assert all(r.action.min() >= 4.0 for r in results[first_b:])
    # The new model started from its own zero state.
    np.testing.assert_array_equal(results[first_b].action, model_b.step(image)[0])
    st = runner.stats()
    assert st["swaps"] == 1 and st["deadline_misses"] == 0 and st["model_version"] == "model-b"

    back = runner.swap_back()
    back_seq = back.wait(2.0)
    r = runner.infer(image, 0.0)
    assert r.model_version == "model-a" and r.tick_seq == back_seq
    np.testing.assert_array_equal(r.action, model_a.step(image)[0])
    assert runner.previous_model is model_b
    assert runner.stats()["swaps"] == 2


def test_swap_never_interrupts_a_running_inference(
    runner_factory, model_a: LoadedModel, model_b: LoadedModel, image: np.ndarray
) -> None:
    started, release = threading.Event(), threading.Event()

    def block(i: int) -> None:
        if i == 0:
            started.set()
            release.wait(5)

    runner = runner_factory(FaultyModel.wrap(model_a, on_call=block), deadline_s=2.0)
    out: list[InferenceResult | None] = []
    t = threading.Thread(target=lambda: out.append(runner.infer(image, 0.0)))
    t.start()
    assert started.wait(2)
    first = runner.swap(model_b)
    second = runner.swap(model_b)  # supersedes the first before it took effect
    assert first.wait(0.05) is None and first.outcome == "superseded"
    assert second.wait(0.05) is None and not second.done  # inference in flight
    release.set()
    t.join()
    assert out[0].model_version == "model-a" and out[0].tick_seq == 1
    assert second.wait(1.0) == 2
    assert runner.infer(image, 0.0).model_version == "model-b"


def test_swap_rejects_other_action_size_and_swap_back_needs_history(
    runner_factory, tmp_path: Path, model_a: LoadedModel
) -> None:
    runner = runner_factory(model_a)
    with pytest.raises(RuntimeError, match="no previous model"):
        runner.swap_back()
    three = load_model(build_dummy_policy(tmp_path / "a3.onnx", action_size=3))
    with pytest.raises(ValueError, match="3 actions"):
        runner.swap(three)


# ---------------------------------------------------------------------------- threads / stats


def test_close_joins_worker_thread(model_a: LoadedModel, model_b: LoadedModel, image) -> None:
    before = set(threading.enumerate())
    runners = [PolicyRunner(model_a, deadline_s=1.0).start() for _ in range(3)]
    for r in runners:
        for _ in range(5):
            assert r.infer(image, 0.0) is not None
    assert len(set(threading.enumerate()) - before) == 3
    pending = runners[0]
    for r in runners:
        assert r.close(timeout=2.0) is True
    assert set(threading.enumerate()) - before == set()
    assert not any(t.name == "policy-runner" for t in threading.enumerate())
    assert pending.infer(image, 0.0) is None
    with pytest.raises(RuntimeError, match="closed"):
        pending.swap(model_b)
    # Many calls on one runner never add threads.
    with PolicyRunner(model_a, deadline_s=1.0) as r:
        n = threading.active_count()
        for _ in range(50):
            r.infer(image, 0.0)
        assert threading.active_count() == n
    assert set(threading.enumerate()) - before == set()


def test_stats_report_latency(runner_factory, model_a: LoadedModel, image: np.ndarray) -> None:
    runner = runner_factory(model_a, deadline_s=1.0)
    for _ in range(20):
        runner.infer(image, 0.0)
    st = runner.stats()
    assert st["count"] == 20 and st["runs"] == 20
    assert 0 < st["latency_p50_ms"] <= st["latency_p99_ms"] <= st["latency_max_ms"] < 1000
    assert 0 < st["compute_p50_ms"] <= st["latency_p50_ms"]
    assert st["model_version"] == "model-a" and st["swaps"] == 0 and st["last_error"] is None


def test_default_deadline() -> None:
    assert default_deadline_s(20.0) == pytest.approx(0.03)
    assert default_deadline_s(50.0, deadline_ms=15.0) == pytest.approx(0.015)


def test_runtime_imports_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, brain.policy, brain.policy.runner, brain.policy.testing\n"
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)

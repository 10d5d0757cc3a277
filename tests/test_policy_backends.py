"""Runtime backends: ONNX Runtime and LiteRT models behind one interface, picked from a
bundle's preferred list with fallback (``brain.policy.backends``).

Real files from a tiny policy (ONNX via torch.onnx, .tflite via litert-torch), run by the
real onnxruntime and ai-edge-litert interpreters.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from brain.model import build_policy, export_onnx  # noqa: E402
from brain.policy import PolicyLoadError, PolicyRunner  # noqa: E402
from brain.policy import litert_model as LM  # noqa: E402
from brain.policy.backends import (  # noqa: E402
    BACKENDS,
    BackendUnavailable,
    backend_available,
    load_backend,
    load_preferred,
)
from cloud_jobs.export.litert import export_litert  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parent.parent
# The tiny preset at 24x32, with grouped convolutions and two memory levels like the robot's.
TINY = {"image_hw": (24, 32), "enc_groups": 4, "cms_levels": 2, "cms_periods": (1, 2)}
NAMES = ("steering", "throttle")
FILES = {"onnx_fp32": "model_fp32.onnx", "litert_fp32": "model_fp32.tflite"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    d = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    policy = build_policy("tiny", **TINY).eval()
    with torch.no_grad():
        policy.head.net[-1].weight.mul_(20.0)  # actions far from 0: differences show
    export_onnx(policy, d / FILES["onnx_fp32"], version="v-onnx")
    export_litert(
        policy, d / FILES["litert_fp32"], {"version": "v-lite", "action_names": list(NAMES)}
    )
    return d, policy


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_litert_and_onnx_run_the_same_step_graph(bundle: tuple[Path, object]) -> None:
    d, policy = bundle
    onnx_m = load_backend(d / FILES["onnx_fp32"], "onnx_fp32", 1, action_names=NAMES)
    lite = load_backend(d / FILES["litert_fp32"], "litert_fp32", 2, action_names=NAMES)
    assert lite.version == "v-lite" and onnx_m.version == "v-onnx"  # from each file's metadata
    assert lite.action_names == NAMES and lite.threads == 2 and lite.backend == "litert_fp32"
    assert lite.input_size == onnx_m.input_size == (24, 32)
    assert lite.action_size == onnx_m.action_size == 2
    assert [s.name for s in lite.recurrent] == sorted(s.name for s in onnx_m.recurrent)
    r_o, r_l = onnx_m.initial_recurrent(), lite.initial_recurrent()
    state, memory = policy.initial_state(1)
    for f in _frames(6):
        a_o, r_o = onnx_m.step(f, r_o)
        a_l, r_l = lite.step(f, r_l)
        with torch.no_grad():
            a_t, state, memory = policy.step(torch.from_numpy(f[None]), state, memory)
        assert a_l.dtype == np.float64 and a_l.shape == (2,)
        np.testing.assert_allclose(a_l, a_t[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(a_o, a_l, atol=1e-4)
        for k in r_o:
            np.testing.assert_allclose(r_o[k], r_l[k], atol=1e-4)
    assert np.abs(a_t.numpy()).max() > 0.05  # a real, non-trivial action was compared
    # A frame of another size is resized like the ONNX path does.
    big = np.zeros((96, 128, 3), np.uint8)
    np.testing.assert_allclose(lite.step(big)[0], onnx_m.step(big)[0], atol=1e-4)
    with pytest.raises(ValueError, match="recurrent state 'memory' has shape"):
        lite.step(_frames(1)[0], {**lite.initial_recurrent(), "memory": np.zeros((1, 3))})
    # A version given by the bundle wins over the file's.
    assert load_backend(d / FILES["litert_fp32"], "litert_fp32", 1, version="b-7").version == "b-7"
    assert load_backend(d / FILES["onnx_fp32"], "onnx_fp32", 1, version="b-7").version == "b-7"


def test_litert_checks_the_contract_and_action_names(
    bundle: tuple[Path, object], tmp_path: Path
) -> None:
    d, _ = bundle
    with pytest.raises(PolicyLoadError, match=r"drives actions \['steering', 'throttle'\]"):
        load_backend(
            d / FILES["litert_fp32"], "litert_fp32", 1, action_names=("throttle", "steering")
        )
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(PolicyLoadError, match="not a loadable LiteRT model"):
        load_backend(bad, "litert_fp32", 1)
    with pytest.raises(PolicyLoadError, match="no such file"):
        load_backend(tmp_path / "none.tflite", "litert_fp32", 1)
    with pytest.raises(ValueError, match="unknown policy backend"):
        load_backend(d / FILES["onnx_fp32"], "tensorrt", 1)


def test_load_preferred_takes_the_first_that_works_and_says_why(
    bundle: tuple[Path, object], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d, _ = bundle
    files = {**FILES, "onnx_int8": "model_int8.onnx"}  # int8 listed but not in the bundle
    caplog.set_level(logging.WARNING, logger="brain.policy.backends")
    model, used = load_preferred(
        d, ["onnx_int8", "litert_fp32", "onnx_fp32"], files, 1, action_names=NAMES
    )
    assert used == "litert_fp32" and model.backend == "litert_fp32"
    assert "onnx_int8" in caplog.text and "model_int8.onnx missing" in caplog.text

    # A corrupt file is a load error: skipped, the next one is used.
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / FILES["litert_fp32"]).write_bytes(b"\0" * 64)
    (broken / FILES["onnx_fp32"]).write_bytes((d / FILES["onnx_fp32"]).read_bytes())
    model, used = load_preferred(broken, ["litert_fp32", "onnx_fp32"], FILES, 1)
    assert used == "onnx_fp32"

    # Nothing works: one error that lists every reason.
    with pytest.raises(PolicyLoadError) as ei:
        load_preferred(broken, ["onnx_int8", "litert_fp32", "tpu"], {**files, "tpu": "x"}, 1)
    msg = str(ei.value)
    assert "no usable policy backend" in msg
    assert "onnx_int8: file model_int8.onnx missing" in msg
    assert "litert_fp32: load error" in msg and "tpu: unknown backend" in msg
    with pytest.raises(PolicyLoadError, match="outside the bundle"):
        load_preferred(broken, ["onnx_fp32"], {"onnx_fp32": "../escape.onnx"}, 1)


def test_missing_litert_library_falls_back_and_tflite_runtime_is_accepted(
    bundle: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = bundle
    from ai_edge_litert import interpreter as real

    # Neither interpreter importable: the backend is unavailable, the bundle falls back.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    ok, why = backend_available("litert_fp32")
    assert not ok and "no LiteRT interpreter installed" in why
    with pytest.raises(BackendUnavailable):
        load_backend(d / FILES["litert_fp32"], "litert_fp32", 1)
    model, used = load_preferred(d, ["litert_fp32", "onnx_fp32"], FILES, 1)
    assert used == "onnx_fp32"

    # Only tflite_runtime installed (here: the same interpreter under that package name).
    pkg = types.ModuleType("tflite_runtime")
    mod = types.ModuleType("tflite_runtime.interpreter")
    mod.Interpreter = real.Interpreter  # type: ignore[attr-defined]
    pkg.interpreter = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", mod)
    assert LM.interpreter_class()[1] == "tflite_runtime"
    model, used = load_preferred(d, ["litert_fp32", "onnx_fp32"], FILES, 1, action_names=NAMES)
    assert used == "litert_fp32" and model.runtime == "tflite_runtime"


def test_policy_runner_runs_and_swaps_between_backends(bundle: tuple[Path, object]) -> None:
    d, _ = bundle
    onnx_m = load_backend(d / FILES["onnx_fp32"], "onnx_fp32", 1)
    lite = load_backend(d / FILES["litert_fp32"], "litert_fp32", 1)
    frames = _frames(3)
    with PolicyRunner(lite, deadline_s=2.0) as runner:
        r1 = runner.infer(frames[0], 0.0)
        assert r1 is not None and r1.model_version == "v-lite"
        runner.swap(onnx_m).wait(2.0)
        r2 = runner.infer(frames[0], 0.05)
        assert r2 is not None and r2.model_version == "v-onnx"
        np.testing.assert_allclose(r1.action, r2.action, atol=1e-4)  # both from zero state
        assert runner.stats()["errors"] == 0
    with pytest.raises(TypeError):
        PolicyRunner().swap(object())  # type: ignore[arg-type]


def test_backends_never_import_torch(bundle: tuple[Path, object]) -> None:
    d, _ = bundle
    code = (
        "import sys, json\n"
        "from brain.policy.backends import load_preferred\n"
        f"m, b = load_preferred({str(d)!r}, ['litert_fp32', 'onnx_fp32'], {FILES!r}, 1)\n"
        "print(json.dumps([b, 'torch' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["litert_fp32", False]
    assert BACKENDS == ("onnx_int8", "litert_fp32", "onnx_fp32")

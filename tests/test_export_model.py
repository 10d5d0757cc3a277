"""``cloud_jobs export`` end to end and ``brain.model.quantize.quantize_int8``.

A tiny policy (48x64 input, a few thousand parameters) and three short simulator episodes
recorded with the real expert, so the whole pipeline -- ONNX + checker, INT8 calibration
on RLDS frames, LiteRT via litert-torch run by ai-edge-litert, Core ML, open-loop parity
and the closed-loop gate in the simulator -- runs for real in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from brain.model import build_policy, export_onnx, load_policy, save_policy  # noqa: E402
from brain.model.quantize import (  # noqa: E402
    QuantizationError,
    first_conv_nodes,
    inspect_quantized,
    quantize_int8,
)
from brain.policy import load_model  # noqa: E402
from brain.policy.backends import load_preferred  # noqa: E402
from cloud_jobs import cli, demos  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

# The tiny preset, with the grouped convolutions and second memory level of the robot's
# preset, which every exporter has to carry over.
TINY = {"enc_groups": 4, "cms_levels": 2, "cms_periods": (1, 4)}
CONTRACT_BACKENDS = {"onnx_fp32", "onnx_int8", "litert_fp32"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    episodes = root / "episodes"
    rc = demos.record_demos_main(
        [
            "--out", str(episodes), "--episodes", "3", "--steps", "40", "--tracks", "oval",
            "--width", "64", "--height", "48", "--workers", "1", "--seed", "3", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    torch.manual_seed(0)
    policy = build_policy("tiny", **TINY)
    with torch.no_grad():  # an untrained net that drives (throttle ~0.5), so the car moves
        policy.head.net[-1].bias.copy_(torch.tensor([0.0, 0.55]))
    ckpt = root / "policy.pt"
    save_policy(policy, ckpt)
    fp32 = root / "fp32.onnx"
    export_onnx(policy, fp32, version="tiny-v1")
    return {"root": root, "episodes": episodes, "ckpt": ckpt, "fp32": fp32}


def _frames(n: int, hw: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    base = np.zeros((*hw, 3), np.uint8)
    base[:, : hw[1] // 2] = 90
    return [
        np.clip(base + rng.integers(0, 60, base.shape), 0, 255).astype(np.uint8) for _ in range(n)
    ]


# ----------------------------------------------------------------------------- quantize_int8


def test_quantize_int8_puts_int8_compute_in_the_graph_and_keeps_the_contract(
    work: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    # Frames at another size are resized like on the robot.
    frames = [*_frames(6), np.zeros((96, 128, 3), np.uint8)]
    rep = quantize_int8(work["fp32"], out, iter(frames))
    assert rep.calibration_frames == 7 and rep.calibrate_method == "percentile"
    assert rep.qdq_compute_nodes > 0 and rep.int8_initializers > 0
    assert rep.quantize_linear > 0 and rep.quantized_compute_nodes == rep.qdq_compute_nodes
    # The image conv, the head and the memory projections stay FP32 (docs/export.md).
    src = onnx.load(str(work["fp32"]))
    assert set(first_conv_nodes(src)) <= set(rep.excluded_nodes)
    assert any(n.startswith("/head/") for n in rep.excluded_nodes)
    assert any(n.startswith("/memory/") for n in rep.excluded_nodes)
    assert any(n.startswith("/encoder/proj/") for n in rep.excluded_nodes)
    # Per output channel for the conv weights only; Gemm weights per tensor.
    conv_weights = {n.input[1] for n in src.graph.node if n.op_type == "Conv"}
    assert rep.per_channel and rep.per_channel_weights
    assert set(rep.per_channel_weights) <= conv_weights
    # Each quantized ReLU is folded into the int8 op before it when ONNX Runtime loads the
    # graph: no float Relu is left outside the FP32 head.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    float_relu = [n.name for n in optimized.graph.node if n.op_type == "Relu"]
    assert [n for n in float_relu if "/head/" not in n] == []
    assert any(n.op_type == "QLinearConv" for n in optimized.graph.node)
    assert rep.int8_size < rep.fp32_size
    assert inspect_quantized(out)["qdq_compute_nodes"] == rep.qdq_compute_nodes
    assert rep.to_dict()["quantized_compute_nodes"] == rep.quantized_compute_nodes
    # Still a contract step graph, with the FP32 graph's metadata, close to FP32.
    m8, m32 = load_model(out), load_model(work["fp32"])
    assert m8.version == "tiny-v1" and m8.action_names == ("steering", "throttle")
    r8, r32 = m8.initial_recurrent(), m32.initial_recurrent()
    for f in _frames(5):
        a8, r8 = m8.step(f, r8)
        a32, r32 = m32.step(f, r32)
        assert np.abs(a8 - a32).max() < 0.05


def test_quantize_int8_per_tensor_and_qoperator(work: dict[str, Path], tmp_path: Path) -> None:
    rep = quantize_int8(
        work["fp32"],
        tmp_path / "q.onnx",
        _frames(3),
        per_channel=False,
        quant_format="QOperator",
        calibrate_method="minmax",
    )
    assert rep.qlinear_nodes > 0 and rep.op_counts.get("QLinearConv", 0) > 0
    assert not rep.per_channel and rep.quant_format == "QOperator"


def test_quantize_int8_rejects_bad_input_clearly(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(ValueError, match="calibration frame 1: expected uint8 HxWx3"):
        quantize_int8(work["fp32"], out, [_frames(1)[0], np.zeros((48, 64), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        quantize_int8(work["fp32"], out, [np.zeros((48, 64, 3), np.float32)])
    with pytest.raises(QuantizationError, match="calibration frames"):
        quantize_int8(work["fp32"], out, [])
    # Nothing to quantize -> a loud error, never a silently-FP32 "int8" file.
    with pytest.raises(QuantizationError, match="no quantized compute nodes"):
        quantize_int8(work["fp32"], out, _frames(2), op_types=("LSTM",))
    with pytest.raises(ValueError, match="calibrate_method"):
        quantize_int8(work["fp32"], out, _frames(1), calibrate_method="median")
    with pytest.raises(FileNotFoundError):
        quantize_int8(tmp_path / "missing.onnx", out, _frames(1))
    assert not out.exists()


# ----------------------------------------------------------------------------- CLI end to end


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # ~25-40 s: importing litert-torch and coremltools alone is ~20 s of CPU
def test_export_cli_end_to_end(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = cli.main(
        [
            "export", "--checkpoint", str(work["ckpt"]), "--episodes", str(work["episodes"]),
            "--out", str(out), "--mobile", "--eval-tracks", "oval", "--eval-max-steps", "40",
            "--eval-render-size", "model", "--quiet",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["status"] == "passed"
    report = json.loads((out / "export_report.json").read_text())

    # The contract the OTA bundle builder reads.
    ckpt_sha = _sha(work["ckpt"])
    assert report["model_version"] == f"tiny-{ckpt_sha[:12]}"
    assert report["preset"] == "tiny" and report["action_names"] == ["steering", "throttle"]
    assert report["image"] == {
        "height": 48, "width": 64, "channels": 3, "dtype": "uint8", "layout": "NHWC"
    }  # fmt: skip
    cfg = build_policy("tiny", **TINY).config
    assert report["recurrent"] == {"state": [1, cfg.state_size], "memory": [1, cfg.memory_size]}
    assert report["source"] == {"checkpoint": str(work["ckpt"]), "checkpoint_sha256": ckpt_sha}
    arts = {a["backend"]: a for a in report["artifacts"]}
    assert set(arts) == CONTRACT_BACKENDS
    for a in arts.values():
        assert (
            a["sha256"] == _sha(out / a["file"]) and a["size"] == (out / a["file"]).stat().st_size
        )
    assert arts["onnx_fp32"]["file"] == "model_fp32.onnx"
    assert arts["onnx_int8"]["file"] == "model_int8.onnx"
    assert arts["litert_fp32"]["file"] == "model_fp32.tflite"
    assert report["preferred_backends"] == ["onnx_int8", "litert_fp32", "onnx_fp32"]

    # Parity as gated: FP32 backends within 1e-4 of torch on held-out episodes.
    par = report["parity"]
    assert report["onnx"]["opset"] >= 18 and report["onnx"]["checker"] == "ok"
    for b in ("onnx_fp32", "litert_fp32"):
        assert par[b]["passed"] and par[b]["max_abs_action_diff"] <= 1e-4 and par[b]["steps"] > 0
    assert par["onnx_int8"]["passed"] and par["onnx_int8"]["quantized_compute_nodes"] > 0
    assert report["quantization"]["calibration_frames"] > 0
    assert set(report["data"]["heldout_episodes"]).isdisjoint(
        report["data"]["calibration_episodes"]
    )
    cl = report["closed_loop"]
    assert cl["tracks"] == ["oval"] and set(cl["backends"]) == CONTRACT_BACKENDS
    assert cl["closed_loop_drop_pct"] == cl["drop"]["onnx_int8"]["drop_pct"] <= 2.0
    assert cl["backends"]["onnx_fp32"]["progress_m"] > 1.0  # it really drove

    # Mobile: Android tflite + metadata, iOS Core ML package.
    meta = json.loads((out / "mobile/android/model_metadata.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["image", "state", "memory"]
    assert meta["inputs"][0]["shape"] == [1, 48, 64, 3] and meta["normalisation"]["in_graph"]
    assert _sha(out / "mobile/android/model.tflite") == arts["litert_fp32"]["sha256"]
    assert (out / "mobile/ios/Policy.mlpackage/Manifest.json").is_file()
    assert report["mobile"]["ios"]["outputs"] == ["action", "state_out", "memory_out"]

    # What the robot does with it: the preferred backend loads and drives like torch.
    files = {a["backend"]: a["file"] for a in report["artifacts"]}
    model, used = load_preferred(
        out, ["onnx_fp32"], files, 1, action_names=("steering", "throttle")
    )
    assert used == "onnx_fp32" and model.version == report["model_version"]
    tp = load_policy(work["ckpt"]).eval()
    state, memory = tp.initial_state(1)
    rec = model.initial_recurrent()
    for f in _frames(4):
        with torch.no_grad():
            a_t, state, memory = tp.step(torch.from_numpy(f[None]), state, memory)
        a_o, rec = model.step(f, rec)
        np.testing.assert_allclose(a_o, a_t[0].numpy(), atol=1e-4)


def test_export_fails_loudly_when_a_gate_fails(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # An impossible INT8 tolerance: INT8 must be 100 % *better* than FP32.
    rc = cli.main(
        [
            "export", "--checkpoint", str(work["ckpt"]), "--episodes", str(work["episodes"]),
            "--out", str(out), "--no-litert", "--max-drop-pct", "-100", "--eval-tracks", "oval",
            "--eval-max-steps", "20", "--eval-render-size", "model", "--quiet",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "FAILED" in err and "onnx_int8" in err
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "failed"
    assert report["preferred_backends"] == ["onnx_fp32"]  # only what passed
    assert report["gates"] == {"onnx_fp32": True, "onnx_int8": False}
    arts = {a["backend"]: a for a in report["artifacts"]}
    assert arts["onnx_int8"]["gate_passed"] is False and "litert_fp32" not in arts


def test_export_bad_input_is_a_clear_error(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", "--out", str(tmp_path / "o"), "--quiet"]
    rc = cli.main(
        [*base, "--checkpoint", str(tmp_path / "nope.pt"), "--episodes", str(work["episodes"])]
    )
    assert rc == 2 and "no such checkpoint" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli.main([*base, "--checkpoint", str(work["ckpt"]), "--episodes", str(empty)])
    assert rc == 2 and "no committed episodes" in capsys.readouterr().err
    rc = cli.main(
        [*base, "--checkpoint", str(work["ckpt"]), "--episodes", str(work["episodes"]),
         "--eval-tracks", "moon"]
    )  # fmt: skip
    assert rc == 2 and "moon" in capsys.readouterr().err


def test_gate_arithmetic() -> None:
    from cloud_jobs.export import parity as P

    base = {"progress_m": 100.0, "mean_abs_cte_m": 0.04, "laps": 3, "off_track_events": 0}
    same = P.closed_loop_drop(base, dict(base))
    assert same["drop_pct"] == 0.0
    worse = P.closed_loop_drop(base, {**base, "progress_m": 97.0, "mean_abs_cte_m": 0.041})
    assert worse["progress_drop_pct"] == pytest.approx(3.0)
    assert worse["cte_increase_pct"] == pytest.approx(2.5)
    assert worse["drop_pct"] == pytest.approx(3.0)
    # Tiny cross-track errors are compared against a 2 cm floor, not relatively.
    tiny = {**base, "mean_abs_cte_m": 0.001}
    assert P.closed_loop_drop(tiny, {**tiny, "mean_abs_cte_m": 0.0012})["drop_pct"] < 2.0
    lost = P.closed_loop_drop(base, {**base, "laps": 2, "off_track_events": 1})
    assert lost["laps_drop_pct"] == pytest.approx(100 / 3) and lost["extra_off_track_events"] == 1

    ok = P.quantized_gate({"action_mae_vs_labels": 0.101}, 0.1)
    bad = P.quantized_gate({"action_mae_vs_labels": 0.104}, 0.1)
    assert ok["passed"] and not bad["passed"] and bad["mae_increase_pct"] == pytest.approx(4.0)
    assert P.fp32_gate({"max_abs_action_diff": 2e-4})["passed"] is False

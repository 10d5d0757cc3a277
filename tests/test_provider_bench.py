"""``cloud_jobs bench``: latency per backend / provider / threads, thresholds, plot, JSON.

Real ONNX Runtime sessions on a tiny exported policy (FP32 + INT8); few rounds, so the
figures are meaningless but every path (interleaved timing, summary keys, threshold
checks and exit codes) is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from brain.model import build_policy, export_onnx  # noqa: E402
from brain.model.quantize import quantize_int8  # noqa: E402
from cloud_jobs import bench, cli  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--rounds", "3", "--per-round", "4", "--warmup", "2", "--quiet"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("exp")
    torch.manual_seed(0)
    policy = build_policy("tiny", image_hw=(24, 32), enc_groups=4)
    export_onnx(policy, d / "model_fp32.onnx", version="t1")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(4)]
    quantize_int8(d / "model_fp32.onnx", d / "model_int8.onnx", frames)
    report = {"model_version": "t1", "preset": "pi5", "closed_loop": {"closed_loop_drop_pct": 0.4}}
    (d / "export_report.json").write_text(json.dumps(report))
    return d


def _thresholds(tmp_path: Path, **profile: object) -> Path:
    p = tmp_path / "th.yaml"
    doc = {"defaults": {"closed_loop_drop_pct_max": 2.0}, "profiles": {"pi5": profile}}
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.slow
def test_bench_reports_every_config_and_passes_generous_thresholds(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    th = _thresholds(
        tmp_path,
        onnx_fp32_p50_ms_max=1000.0,
        onnx_int8_p50_ms_max=1000.0,
        int8_speedup_min=0.0,
        size_bytes_max={"onnx_int8": 10_000_000},
    )
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = cli.main(
        ["bench", "--export-dir", str(export_dir), "--threads", "1,2", "--thresholds", str(th),
         "--json", str(out), "--plot", str(png), *FAST]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(out.read_text())
    for key in ("onnx_fp32_p50_ms", "onnx_int8_p50_ms", "litert_p50_ms", "int8_speedup"):
        assert key in doc
    assert doc["onnx_fp32_p50_ms"] > 0 and doc["onnx_int8_p50_ms"] > 0
    assert doc["int8_speedup"] == pytest.approx(
        doc["onnx_fp32_p50_ms"] / doc["onnx_int8_p50_ms"], rel=1e-2
    )
    assert doc["litert_p50_ms"] is None  # no .tflite in this export: not measured, not faked
    assert doc["closed_loop_drop_pct"] == 0.4  # from the export report
    rows = [r for r in doc["rows"] if not r.get("skipped")]
    assert {(r["backend"], r["threads"]) for r in rows} == {
        ("onnx_fp32", 1), ("onnx_fp32", 2), ("onnx_int8", 1), ("onnx_int8", 2)
    }  # fmt: skip
    assert all(r["provider"] == "CPUExecutionProvider" for r in rows)
    assert all(r["steps"] == 12 and r["p99_ms"] >= r["p50_ms"] >= r["min_ms"] > 0 for r in rows)
    assert doc["sizes"]["onnx_int8"] == (export_dir / "model_int8.onnx").stat().st_size
    assert doc["passed"] and {c["check"] for c in doc["checks"]} >= {
        "onnx_fp32_p50_ms", "onnx_int8_p50_ms", "int8_speedup", "closed_loop_drop_pct",
        "onnx_int8_size_bytes",
    }  # fmt: skip
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "int8 speed-up" in captured.out


@pytest.mark.slow
def test_bench_fails_on_a_regression(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    th = _thresholds(tmp_path, onnx_int8_p50_ms_max=1e-6)  # nothing is this fast
    out = tmp_path / "b.json"
    rc = cli.main(
        ["bench", "--export-dir", str(export_dir), "--threads", "1", "--thresholds", str(th),
         "--json", str(out), *FAST]
    )  # fmt: skip
    assert rc == 1 and "REGRESSION" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert not doc["passed"]
    failed = [c["check"] for c in doc["checks"] if c["ok"] is False]
    assert failed == ["onnx_int8_p50_ms"]

    # The closed-loop drop from the export is a threshold too.
    th = _thresholds(tmp_path, closed_loop_drop_pct_max=0.1)
    rc = cli.main(
        ["bench", "--export-dir", str(export_dir), "--threads", "1", "--thresholds", str(th), *FAST]
    )  # fmt: skip
    assert rc == 1 and "closed_loop_drop_pct" in capsys.readouterr().err


def test_bench_bad_input_is_a_clear_error(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["bench", "--export-dir", str(tmp_path), *FAST])
    assert rc == 2 and "no export report" in capsys.readouterr().err
    rc = cli.main(["bench", "--export-dir", str(export_dir), "--threads", "0", *FAST])
    assert rc == 2 and "--threads" in capsys.readouterr().err
    rc = cli.main(["bench", "--export-dir", str(export_dir), "--backends", "onnx_fp16", *FAST])
    assert rc == 2 and "unknown backends" in capsys.readouterr().err
    rc = cli.main(
        ["bench", "--export-dir", str(export_dir), "--threads", "1", "--profile", "moon", *FAST]
    )  # fmt: skip
    assert rc == 2 and "no thresholds for profile 'moon'" in capsys.readouterr().err


def test_shipped_thresholds_cover_the_presets() -> None:
    for profile in ("pi5", "large"):
        th = bench.load_thresholds(bench.DEFAULT_THRESHOLDS, profile)
        for key in (
            "onnx_fp32_p50_ms_max",
            "onnx_int8_p50_ms_max",
            "litert_p50_ms_max",
            "int8_speedup_min",
            "closed_loop_drop_pct_max",
        ):
            assert isinstance(th[key], (int, float)), (profile, key)
        assert set(th["size_bytes_max"]) == {"onnx_fp32", "onnx_int8", "litert_fp32"}
    # The targets for pi5 on one thread are at least enforced as ceilings.
    assert bench.load_thresholds(bench.DEFAULT_THRESHOLDS, "pi5")["onnx_int8_p50_ms_max"] <= 3.0


def test_check_thresholds_handles_unknown_values() -> None:
    summary = {"onnx_fp32_p50_ms": 2.0, "litert_p50_ms": None, "int8_speedup": 1.4, "sizes": {}}
    rows = bench.check_thresholds(
        summary, {"onnx_fp32_p50_ms_max": 1.0, "litert_p50_ms_max": 5.0, "int8_speedup_min": 1.5}
    )
    by = {r["check"]: r["ok"] for r in rows}
    assert by == {"onnx_fp32_p50_ms": False, "litert_p50_ms": None, "int8_speedup": False}

"""The FP32 ONNX step graph: :func:`brain.model.export_onnx`, then ``onnx.checker``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brain.model.export import ONNX_OPSET

MIN_OPSET = 18


def export_fp32(
    policy: Any, path: Path, *, version: str, opset: int = ONNX_OPSET
) -> dict[str, Any]:
    """Write and check the step graph; returns its opset, inputs and outputs."""
    import onnx

    from brain.model import export_onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the export needs opset >= {MIN_OPSET}")
    export_onnx(policy, path, version=version, opset=opset)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx", 0) < MIN_OPSET:
        raise ValueError(f"{path}: exported with opset {opsets} (< {MIN_OPSET})")

    def dims(v: Any) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in v.type.tensor_type.shape.dim
        ]

    return {
        "opset": opsets.get("ai.onnx"),
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "checker": "ok",
    }

"""``--mobile``: files a phone app can run the policy from.

* Android: the LiteRT step graph (``model.tflite``) and ``model_metadata.json`` describing
  every input and output (name, dtype, shape, layout), the normalisation (already inside
  the graph: feed raw RGB bytes; the constants are listed for reference), the recurrent
  loop (feed ``X_out`` back as ``X``, start at zeros) and the action names.
* iOS: a Core ML ML Program (``Policy.mlpackage``) converted on Linux with coremltools.
  Core ML has no uint8 tensor input, so the image is an ``ImageType`` (a CVPixelBuffer,
  RGB, 0-255, NCHW as Core ML sees it); the wrapper converts it to the graph's uint8 NHWC
  exactly (round + clamp), so the numbers are the ones the robot sees.  ``state`` is
  called ``state_in`` there (``state`` is a reserved name in Core ML's MIL).  Core ML
  cannot *run* on Linux, so the package is checked structurally (spec inputs, outputs,
  metadata), not numerically -- the LiteRT/ONNX parity covers the maths.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

COREML_STATE_NAME = "state_in"


def graph_metadata(policy: Any, version: str) -> dict[str, Any]:
    from brain.model.encoder import normalisation_info

    cfg = policy.config
    h, w = cfg.image_hw
    return {
        "format": "continuon-policy-mobile/1",
        "model_version": version,
        "preset": cfg.preset,
        "action_names": list(cfg.action_names or []),
        "inputs": [
            {
                "name": "image",
                "dtype": "uint8",
                "shape": [1, h, w, 3],
                "layout": "NHWC",
                "color": "RGB",
                "range": [0, 255],
            },
            {"name": "state", "dtype": "float32", "shape": [1, cfg.state_size], "recurrent": True},
            {
                "name": "memory",
                "dtype": "float32",
                "shape": [1, cfg.memory_size],
                "recurrent": True,
            },
        ],
        "outputs": [
            {
                "name": "action",
                "dtype": "float32",
                "shape": [1, cfg.action_dim],
                "names": list(cfg.action_names or []),
                "range": [-1.0, 1.0] if cfg.action_tanh else None,
            },
            {
                "name": "state_out",
                "dtype": "float32",
                "shape": [1, cfg.state_size],
                "feeds": "state",
            },
            {
                "name": "memory_out",
                "dtype": "float32",
                "shape": [1, cfg.memory_size],
                "feeds": "memory",
            },
        ],
        "normalisation": {
            "in_graph": True,
            "feed": "raw RGB uint8 pixels, resized to the input size with area interpolation",
            **normalisation_info(cfg),
        },
        "recurrence": "start every recurrent input at zeros; after each step feed X_out back as X; "
        "reset to zeros when an output is NaN/Inf",
    }


def write_android(out_dir: Path, tflite: Path, meta: dict[str, Any]) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tflite, out_dir / "model.tflite")
    android = dict(
        meta, runtime="LiteRT (ai-edge-litert / TensorFlow Lite), signature serving_default"
    )
    (out_dir / "model_metadata.json").write_text(json.dumps(android, indent=2) + "\n")
    return {"model": "model.tflite", "metadata": "model_metadata.json"}


def write_coreml(out_dir: Path, policy: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Convert to ``out_dir/Policy.mlpackage`` and check its spec; returns what it holds."""
    import coremltools as ct

    h, w = policy.config.image_hw
    ml, state_shape, memory_shape = _convert_coreml(policy, h, w)
    ml.short_description = (
        f"Continuon Brain driving policy {meta['model_version']} (one control step)"
    )
    ml.version = str(meta["model_version"])
    ml.user_defined_metadata["action_names"] = ",".join(meta["action_names"])
    ml.user_defined_metadata["model_version"] = str(meta["model_version"])
    ml.user_defined_metadata["recurrence"] = (
        "state_out -> state_in, memory_out -> memory; start at zeros"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pkg = out_dir / "Policy.mlpackage"
    if pkg.exists():
        shutil.rmtree(pkg)
    ml.save(str(pkg))
    spec = ct.utils.load_spec(str(pkg))
    inputs = {i.name: i.type.WhichOneof("Type") for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    want_in = {
        "image": "imageType",
        COREML_STATE_NAME: "multiArrayType",
        "memory": "multiArrayType",
    }
    if inputs != want_in or outputs != ["action", "state_out", "memory_out"]:
        raise RuntimeError(
            f"Core ML package has inputs {inputs} and outputs {outputs}, expected {want_in}"
        )
    ios = _ios_metadata(meta, h, w, state_shape, memory_shape)
    (out_dir / "model_metadata.json").write_text(json.dumps(ios, indent=2) + "\n")
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    return {
        "model": "Policy.mlpackage",
        "metadata": "model_metadata.json",
        "size": size,
        "inputs": inputs,
        "outputs": outputs,
    }


def _convert_coreml(policy: Any, h: int, w: int) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """Trace the step behind a pixel-buffer wrapper and convert it to an ML Program.

    Returns the model and the shapes of the recurrent state and memory inputs.
    """
    import coremltools as ct
    import torch
    from torch import nn

    class PixelBufferStep(nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.policy = p

        def forward(self, image, state, memory):
            x = image.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)
            return self.policy.step(x, state, memory)

    was_training = policy.training
    policy.eval()
    state, memory = policy.initial_state(1, device="cpu")
    example = (torch.zeros(1, 3, h, w), state, memory)
    sink = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(PixelBufferStep(policy).eval(), example)
            ml = ct.convert(
                traced,
                inputs=[
                    ct.ImageType(
                        name="image", shape=(1, 3, h, w), color_layout=ct.colorlayout.RGB, scale=1.0
                    ),
                    ct.TensorType(
                        name=COREML_STATE_NAME, shape=tuple(state.shape), dtype=np.float32
                    ),
                    ct.TensorType(name="memory", shape=tuple(memory.shape), dtype=np.float32),
                ],
                outputs=[ct.TensorType(name=n) for n in ("action", "state_out", "memory_out")],
                convert_to="mlprogram",
                minimum_deployment_target=ct.target.iOS16,
                compute_precision=ct.precision.FLOAT32,
            )
    finally:
        policy.train(was_training)
    return ml, tuple(state.shape), tuple(memory.shape)


def _ios_metadata(
    meta: dict[str, Any],
    h: int,
    w: int,
    state_shape: tuple[int, ...],
    memory_shape: tuple[int, ...],
) -> dict[str, Any]:
    """``model_metadata.json`` for iOS: the graph's, with Core ML's input names and types."""
    ios = dict(meta)
    ios["inputs"] = [
        {
            "name": "image",
            "type": "CVPixelBuffer",
            "color": "RGB",
            "shape": [1, 3, h, w],
            "range": [0, 255],
            "note": "converted in-graph to uint8 NHWC",
        },
        {
            "name": COREML_STATE_NAME,
            "dtype": "float32",
            "shape": list(state_shape),
            "recurrent": True,
        },
        {"name": "memory", "dtype": "float32", "shape": list(memory_shape), "recurrent": True},
    ]
    ios["outputs"] = [
        dict(o, feeds=COREML_STATE_NAME) if o["name"] == "state_out" else o for o in meta["outputs"]
    ]
    ios["runtime"] = "Core ML (ML Program, iOS 16+), checked structurally on Linux (not run)"
    return ios


def export_mobile(out: Path, policy: Any, version: str, tflite: Path | None) -> dict[str, Any]:
    meta = graph_metadata(policy, version)
    result: dict[str, Any] = {}
    if tflite is not None and tflite.is_file():
        result["android"] = write_android(out / "android", tflite, meta)
        result["android"]["dir"] = "mobile/android"
    else:
        result["android"] = {"error": "no LiteRT model was built (--no-litert or it failed)"}
    result["ios"] = write_coreml(out / "ios", policy, meta)
    result["ios"]["dir"] = "mobile/ios"
    return result

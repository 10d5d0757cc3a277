"""Building real (tiny) edge bundles and OTA updaters for the OTA tests and bench/ota.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brain.config import OtaConfig
from brain.ota.slots import Slots
from brain.ota.state import OtaState, SlotRecord, StateStore

HW = "continuon-car"
ACTIONS = ["steering", "throttle"]
H, W = 24, 32


def fast_safety(**kw: Any) -> dict[str, Any]:
    """A bundle safety manifest with a short health window, for tests."""
    return {
        "max_latency_ms": 500.0,
        "health_window_s": 0.2,
        "max_nan_outputs": 0,
        "max_inference_errors": 0,
        "max_safety_interventions": 50,
        **kw,
    }


def build_nan_on_texture_policy(path: Path, *, height: int = H, width: int = W) -> Path:
    """A step graph that is finite on a flat grey image but NaN on any textured one.

    action = sqrt(0.02 - pixel_range/255) - 0.1: the smoke test's grey image has range 0
    (finite action), a camera image has a range far above 5 grey levels (NaN).  It gets
    through the pre-swap smoke test and fails the health window on the robot.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def c(name: str, v: Any) -> Any:
        return numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["xf"], ["mx"], keepdims=0),
        helper.make_node("ReduceMin", ["xf"], ["mn"], keepdims=0),
        helper.make_node("Sub", ["mx", "mn"], ["rng"]),
        helper.make_node("Mul", ["rng", "inv255"], ["rng01"]),
        helper.make_node("Sub", ["eps", "rng01"], ["arg"]),
        helper.make_node("Sqrt", ["arg"], ["root"]),
        helper.make_node("Sub", ["root", "off"], ["s"]),
        helper.make_node("Mul", ["s", "ones"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan_on_texture",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, height, width, 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])],
        initializer=[c("inv255", 1 / 255), c("eps", 0.02), c("off", 0.1), c("ones", [[1.0, 1.0]])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"action_names": ",".join(ACTIONS)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_export(
    export_dir: Path,
    *,
    bias: float = 0.0,
    nan_on_texture: bool = False,
    pad_mb: float = 0.0,
    height: int = H,
    width: int = W,
) -> Path:
    """An export directory (model_fp32.onnx + export_report.json) as cloud_jobs writes it."""
    from brain.policy.testing import build_dummy_policy

    export_dir.mkdir(parents=True, exist_ok=True)
    model = export_dir / "model_fp32.onnx"
    if nan_on_texture:
        build_nan_on_texture_policy(model, height=height, width=width)
    else:
        build_dummy_policy(
            model,
            height=height,
            width=width,
            conv=False,
            state_size=4,
            memory_size=4,
            bias=bias,
            action_names=",".join(ACTIONS),
        )
    if pad_mb:  # an unused initializer: a bundle of realistic size for the benchmark
        import numpy as np
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(model))
        pad = np.random.default_rng(0).standard_normal(int(pad_mb * 2**20 / 4)).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(pad, "padding"))
        onnx.save(m, str(model))
    report = {
        "action_names": ACTIONS,
        "image": {"height": height, "width": width},
        "artifacts": [{"file": "model_fp32.onnx", "backend": "onnx_fp32"}],
        "preferred_backends": ["onnx_fp32"],
    }
    (export_dir / "export_report.json").write_text(json.dumps(report))
    return export_dir


def make_bundle(
    out: Path,
    version: str,
    counter: int,
    *,
    hardware_id: str = HW,
    safety: dict[str, Any] | None = None,
    **export_kw: Any,
) -> Path:
    from brain.bundle.pack import build_bundle

    export = make_export(out.parent / f"export-{version}", **export_kw)
    return build_bundle(
        export,
        out,
        version=version,
        release_counter=counter,
        hardware_id=hardware_id,
        safety=safety if safety is not None else fast_safety(),
    )


def seed_committed(root: Path, archive: Path, slot: str = "A") -> OtaState:
    """A robot whose committed bundle is ``archive`` in ``slot`` (as after a past install)."""
    slots = Slots(root)
    manifest = slots.stage(archive, slot)  # type: ignore[arg-type]
    rec = SlotRecord(
        slot=slot,  # type: ignore[arg-type]
        version=manifest.version,
        release_counter=manifest.release_counter,
        manifest_sha256=slots.manifest_sha256(slot),  # type: ignore[arg-type]
    )
    st = OtaState(phase="committed", committed=rec, release_counter=rec.release_counter)
    store = StateStore(root)
    store.save(st)
    store.save_committed(rec)
    return st


def ota_config(**kw: Any) -> OtaConfig:
    base = {"health_window_s": 0.2, "max_deadline_misses": 50, "smoke_steps": 3}
    base.update(kw)
    return OtaConfig(**base)


def ota_overrides(repo_dir: Path, **more: Any) -> dict[str, Any]:
    """A daemon that installs from the TUF repository in ``repo_dir`` and drives its policy."""
    return {
        "ota.trusted_root": str(repo_dir / "metadata" / "1.root.json"),
        "ota.repository_url": str(repo_dir),
        "ota.health_window_s": 1.0,
        "ota.max_deadline_misses": 20,
        "control.autopilot": "policy",
        # CI machines are loaded: keep deadline misses and stale frames (neutral ticks that
        # have nothing to do with OTA) out of the picture.
        "policy.deadline_ms": 200.0,
        "control.max_frame_age_ms": 500.0,
        **more,
    }

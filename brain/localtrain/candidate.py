"""After training: the promotion gate on the candidate, and its export when the gate accepts.

The gate (:mod:`.gate`) compares base and candidate on held-out episodes and, with the sim,
in closed loop; an accepted adapter is merged, exported to the ONNX step graph, checked
against torch with ONNX Runtime, and quantized to INT8 when ``brain.model.quantize`` is
installed and the INT8 graph drives like the FP32 one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from brain.localtrain.trainer import Trainer, image_size

if TYPE_CHECKING:
    from brain.model import Policy

#: INT8 is shipped only if its actions stay this close to FP32 on real frames (mean |diff|).
INT8_MEAN_TOL = 0.05


def run_gate(tr: Trainer) -> Any:
    """The gate's decision (a ``GateDecision``), also kept as the run's ``gate.json``."""
    from brain.localtrain import gate as G

    np = tr.np
    base, cand, lab = tr.held_out_actions()
    ok = np.isfinite(lab)
    metrics = G.GateMetrics(
        held_out_episodes=len(tr.held_data),
        held_out_steps=len(lab),
        base_mae=float(np.abs(base - lab)[ok].mean()) if ok.any() else None,
        candidate_mae=float(np.abs(cand - lab)[ok].mean()) if ok.any() else None,
        mean_action_change=float(np.abs(cand - base).mean()) if len(lab) else None,
    )
    gs = tr.job.gate
    if gs.closed_loop and gs.sim is not None:
        drv_base = _TorchDriver(tr, "base", adapter=False)
        drv_cand = _TorchDriver(tr, "candidate", adapter=True)
        metrics.closed_loop = G.closed_loop_compare(
            drv_base, drv_cand, gs.sim, steps=gs.closed_loop_steps, rate_hz=gs.rate_hz
        )
    decision = G.decide(
        metrics, max_action_change=gs.max_action_change, min_improvement=gs.min_improvement
    )
    tr.D.dump_json(tr.job.path("gate"), decision.to_dict())
    return decision


def export_candidate(tr: Trainer) -> dict[str, Any]:
    """Merge the adapter, export ONNX, check it against torch, quantize to INT8."""
    np, torch = tr.np, tr.torch
    from brain.model import export_onnx

    out = tr.job.path("export")
    out.mkdir(parents=True, exist_ok=True)
    frames = _parity_frames(tr)
    tr.model.eval()
    with torch.no_grad():  # the candidate's actions through torch, before merging
        ref = _step_actions(tr.policy, frames)
    merged = cast("Policy", tr.model.merge_and_unload())  # peft returns its base model
    fp32 = out / "policy.onnx"
    export_onnx(
        merged,
        fp32,
        version=tr.job.version,
        metadata={"provenance": "local", "base_model_sha256": tr.base_sha},
    )
    got = _onnx_actions(fp32, frames)
    parity = float(np.abs(got - ref).max())
    if not parity < 1e-3:
        raise RuntimeError(f"merged ONNX disagrees with the torch candidate by {parity:.2e}")
    res: dict[str, Any] = {"onnx": str(fp32), "onnx_parity_max_abs": parity, "int8": None}
    artifacts = [{"file": fp32.name, "backend": "onnx_fp32"}]
    try:
        from brain.model.quantize import quantize_int8
    except ImportError:
        res["int8_skipped"] = "brain.model.quantize is not installed"
    else:
        int8 = out / "policy_int8.onnx"
        rep = quantize_int8(fp32, int8, list(frames))
        res["int8_report"] = _plain(rep)
        diff = np.abs(_onnx_actions(int8, frames) - got)
        res["int8_parity"] = {"mean_abs": float(diff.mean()), "max_abs": float(diff.max())}
        if float(diff.mean()) <= INT8_MEAN_TOL:
            res["int8"] = str(int8)
            artifacts.insert(0, {"file": int8.name, "backend": "onnx_int8"})
        else:  # keep FP32 only: an INT8 graph that drives differently is not shipped
            res["int8_skipped"] = f"INT8 differs from FP32 by {float(diff.mean()):.3f} on average"
            int8.unlink(missing_ok=True)
    h, w = tr.cfg.image_hw
    report = {
        "model_version": tr.job.version,
        "action_names": list(tr.cfg.action_names or []),
        "image": {"height": h, "width": w, "channels": 3, "dtype": "uint8", "layout": "NHWC"},
        "artifacts": artifacts,
        "preferred_backends": [a["backend"] for a in artifacts],
        "source": {"checkpoint_sha256": None, "base_model_sha256": tr.base_sha},
        "parity": {"onnx_fp32_vs_torch_max_abs": parity, "int8": res.get("int8_parity")},
        "local_train": {"run_dir": tr.job.run_dir, "steps": tr.step},
    }
    tr.D.dump_json(out / "export_report.json", report)
    res["report"] = str(out / "export_report.json")
    return res


def _parity_frames(tr: Trainer, n: int = 32) -> Any:
    """Real frames in order (held-out first): for the ONNX check and INT8 calibration."""
    np = tr.np
    hw = image_size(tr.cfg.image_hw)
    for ep in list(tr.held_eps) + list(tr.train_eps):
        arr = tr.D.load_episode(ep, hw, tr.job.label, Path(tr.job.cache_dir))
        if len(arr.frames):
            return np.ascontiguousarray(arr.frames[:n])
    raise RuntimeError("no frames to calibrate with")


def _plain(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def _step_actions(policy: Any, frames: Any) -> Any:
    import numpy as np
    import torch

    state, memory = policy.initial_state(1)
    acts = []
    for f in frames:
        a, state, memory = policy.step(torch.from_numpy(np.array(f))[None], state, memory)
        acts.append(a[0].numpy())
    return np.stack(acts)


def _onnx_actions(path: Path, frames: Any) -> Any:
    import numpy as np

    from brain.policy import load_model

    model = load_model(path, threads=1)
    rec = model.initial_recurrent()
    acts = []
    for f in frames:
        a, rec = model.step(f, rec)
        acts.append(np.asarray(a, dtype=np.float64))
    return np.stack(acts)


class _TorchDriver:
    """The base (adapter off) or candidate policy driving the sim, state carried per tick."""

    needs_image = True

    def __init__(self, trainer: Trainer, name: str, *, adapter: bool) -> None:
        self.t = trainer
        self.name = name
        self.adapter = adapter
        self.image_hw = image_size(trainer.cfg.image_hw)
        self.state: Any = None
        self.memory: Any = None

    def reset(self) -> None:
        self.state, self.memory = self.t.policy.initial_state(1)

    def act(self, image: Any, world: Any) -> Any:
        import contextlib

        import numpy as np
        import torch

        from brain.imaging import resize_rgb

        x = torch.from_numpy(resize_rgb(image, self.image_hw))[None]
        ctx = contextlib.nullcontext() if self.adapter else self.t.model.disable_adapter()
        with torch.no_grad(), ctx:
            a, self.state, self.memory = self.t.policy.step(x, self.state, self.memory)
        return a[0].numpy().astype(np.float64)

"""The policies ``cloud_jobs evaluate`` drives: a torch checkpoint stepped tick by tick, or an
exported ONNX step graph through the robot's own loader, each carrying its recurrent state.

Kept apart from the evaluation's CLI and reports so that the memorization comparison and
the benches build the same drivers without the rest of ``evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brain.hardware.sim import SimWorld
from brain.hardware.sim.closed_loop import resize_frame


class TorchDriver:
    """A ``brain.model`` policy run with torch one step at a time, state carried across ticks."""

    needs_image = True

    def __init__(
        self,
        policy: Any,
        *,
        memory_lr: float | None = None,
        surprise_threshold: float | None = None,
        threads: int = 1,
        name: str = "policy",
    ) -> None:
        import torch

        from brain.model import preprocess_frame

        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.policy = policy.eval()
        self.preprocess = preprocess_frame
        self.name = name
        self.image_hw = tuple(policy.config.image_hw)
        set_memorization(policy, memory_lr, surprise_threshold)
        self.state: Any = None
        self.memory: Any = None

    def reset(self) -> None:
        self.state, self.memory = self.policy.initial_state(1)

    def act(self, image: np.ndarray | None, world: SimWorld) -> np.ndarray:
        assert image is not None
        x = self.torch.from_numpy(self.preprocess(image, self.image_hw))[None]
        with self.torch.no_grad():
            action, self.state, self.memory = self.policy.step(x, self.state, self.memory)
        return action[0].detach().cpu().numpy().astype(np.float64)


class OnnxDriver:
    """An exported ONNX step graph through the robot's own loader (``brain.policy``)."""

    needs_image = True

    def __init__(self, path: Path, *, threads: int = 1, name: str = "policy") -> None:
        from brain.policy import load_model

        self.model = load_model(path, threads=threads)
        self.name = name
        self.image_hw = self.model.input_size
        self.recurrent: dict[str, np.ndarray] | None = None

    def reset(self) -> None:
        self.recurrent = self.model.initial_recurrent()

    def act(self, image: np.ndarray | None, world: SimWorld) -> np.ndarray:
        assert image is not None
        action, self.recurrent = self.model.step(resize_frame(image, self.image_hw), self.recurrent)
        return action


def set_memorization(policy: Any, lr: float | None, threshold: float | None) -> None:
    """Set test-time memorization on a torch policy (None leaves a setting as trained).

    ``Policy.set_memorize(lr, threshold)``: lr is the memory's write-rate multiplier
    (0 = memory frozen), threshold the surprise ``||v - M k||`` below which it is not written.
    """
    if lr is None and threshold is None:
        return
    setter = getattr(policy, "set_memorize", None)
    if not callable(setter):
        raise RuntimeError("this policy has no test-time memorization switch (set_memorize)")
    setter(lr=lr, threshold=threshold)

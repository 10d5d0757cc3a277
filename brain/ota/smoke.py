"""Loading a bundle's policy and smoke-testing it before it gets the wheel.

Kept apart from the install state machine (brain.ota.updater): this is the
one place that picks an inference backend for a bundle, used at boot, for a
new candidate and for a rollback alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from brain.bundle.manifest import EdgeManifest
    from brain.policy import LoadedModel


class SmokeTestFailed(RuntimeError):
    """The new model misbehaved on a test image before it was given the wheel."""


def load_bundle_policy(
    bundle_dir: Path,
    manifest: EdgeManifest,
    *,
    threads: int = 1,
    action_names: tuple[str, ...] | None = None,
) -> LoadedModel:
    """Load (and warm up) the policy of an unpacked bundle: the one place that picks a backend.

    The first backend of the bundle's ``preferred_backends`` that loads on this
    robot wins (:func:`brain.policy.backends.load_preferred`); the model is
    named after the bundle's version.
    """
    from brain.policy.backends import load_preferred

    files: dict[str, str] = {}
    for name, art in manifest.artifacts.items():
        backend = getattr(art, "backend", None)
        if backend and backend not in files:
            files[backend] = name
    preferred: list[str] = list(manifest.preferred_backends) or list(files)
    model, _backend = load_preferred(
        bundle_dir,
        preferred,
        files,
        threads,
        action_names=action_names,
        version=str(manifest.version),
    )
    loaded: LoadedModel = model
    return loaded


def smoke_test(model: LoadedModel, steps: int, max_latency_ms: float | None) -> dict[str, float]:
    """Run ``steps`` steps on a grey image with carried state; raise SmokeTestFailed if bad."""
    h, w = model.input_size
    image = np.full((h, w, 3), 128, dtype=np.uint8)
    state = model.initial_recurrent()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        try:
            action, state = model.step(image, state)
        except Exception as exc:
            raise SmokeTestFailed(f"step {i} raised {type(exc).__name__}: {exc}") from exc
        times.append(time.perf_counter() - t0)
        if not np.isfinite(action).all() or not all(np.isfinite(v).all() for v in state.values()):
            raise SmokeTestFailed(f"step {i} produced NaN/Inf outputs")
    median_ms = float(np.median(times) * 1000.0)
    if max_latency_ms is not None and median_ms > max_latency_ms:
        raise SmokeTestFailed(
            f"a step takes {median_ms:.1f} ms on this robot, the bundle allows {max_latency_ms} ms"
        )
    return {"median_step_ms": round(median_ms, 3)}

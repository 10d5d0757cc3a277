"""Choosing how to run a policy: ONNX Runtime (FP32 / INT8) or LiteRT, from a preferred list.

An edge bundle can hold the same policy in several formats (``export_report.json`` /
``edge_manifest.json``: ``preferred_backends`` in order, and which file each one is).  The
robot takes the first one it can actually run: a backend whose library is not installed,
whose file is missing or which fails to load is skipped -- with the reason logged -- and the
next one is tried.  Only when none works is :class:`PolicyLoadError` raised, listing every
reason, so a bundle never fails just because this robot lacks one optional runtime.

Backends: ``onnx_fp32``, ``onnx_int8`` (onnxruntime, :func:`brain.policy.load_model`) and
``litert_fp32`` (ai_edge_litert or tflite_runtime, :mod:`brain.policy.litert_model`, imported
only when tried).  No torch anywhere here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .contract import PolicyLoadError, RecurrentSpec
from .onnx_model import load_model

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnx_fp32", "onnx_int8")
LITERT_BACKENDS = ("litert_fp32",)
BACKENDS: tuple[str, ...] = ("onnx_int8", "litert_fp32", "onnx_fp32")
"""Every backend name, in the default order of preference (fastest first)."""


class PolicyModel(Protocol):
    """What :class:`brain.policy.PolicyRunner` needs of a model (LoadedModel, LiteRTModel)."""

    path: Path
    version: str
    sha256: str
    input_size: tuple[int, int]
    action_size: int
    recurrent: tuple[RecurrentSpec, ...]
    action_names: tuple[str, ...] | None

    def initial_recurrent(self) -> dict[str, np.ndarray]: ...

    def prepare_image(self, image: np.ndarray) -> np.ndarray: ...

    def step(
        self, image: np.ndarray, recurrent: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class BackendUnavailable(RuntimeError):
    """The library a backend needs is not installed on this machine."""


def backend_available(backend: str) -> tuple[bool, str]:
    """(True, "") when the runtime library of ``backend`` imports, else (False, why)."""
    if backend in ONNX_BACKENDS:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime not installed ({exc})"
        return True, ""
    if backend in LITERT_BACKENDS:
        from .litert_model import LiteRTUnavailable, interpreter_class

        try:
            interpreter_class()
        except LiteRTUnavailable as exc:
            return False, str(exc)
        return True, ""
    return False, f"unknown backend {backend!r} (known: {list(BACKENDS)})"


def load_backend(
    path: str | os.PathLike[str],
    backend: str,
    threads: int = 1,
    *,
    action_names: Sequence[str] | None = None,
    version: str | None = None,
) -> Any:
    """Load ``path`` with ``backend``; returns a :class:`PolicyModel` (warmed up).

    ``version`` overrides the file's own version metadata (a bundle names its model once).
    Raises :class:`BackendUnavailable` when the backend's library is missing,
    :class:`PolicyLoadError` for a bad file, ``ValueError`` for an unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown policy backend {backend!r} (known: {list(BACKENDS)})")
    ok, why = backend_available(backend)
    if not ok:
        raise BackendUnavailable(why)
    if backend in ONNX_BACKENDS:
        model = load_model(path, threads, action_names=action_names)
        if version and model.version != version:
            import dataclasses

            model = dataclasses.replace(model, version=version)
        return model
    from .litert_model import load_litert

    return load_litert(path, threads, action_names=action_names, version=version)


def load_preferred(
    bundle_dir: str | os.PathLike[str],
    preferred: Sequence[str],
    files: Mapping[str, str],
    threads: int = 1,
    *,
    action_names: Sequence[str] | None = None,
    version: str | None = None,
) -> tuple[Any, str]:
    """The first backend of ``preferred`` that loads: ``(model, backend used)``.

    ``files`` maps backend -> file name relative to ``bundle_dir``.  Each skipped backend
    is logged with its reason (library missing, no file, load error); when none works,
    :class:`PolicyLoadError` lists them all.
    """
    root = Path(bundle_dir)
    reasons: list[str] = []
    if not preferred:
        raise PolicyLoadError(root, "no preferred backends given")
    for backend in preferred:
        name = files.get(backend)
        if backend not in BACKENDS:
            why = f"unknown backend (known: {list(BACKENDS)})"
        elif not name:
            why = "no file for it in the bundle"
        else:
            path = root / name
            if root.resolve() not in (path.resolve(), *path.resolve().parents):
                why = f"file {name!r} is outside the bundle"
            elif not path.is_file():
                why = f"file {name} missing"
            else:
                try:
                    model = load_backend(
                        path, backend, threads, action_names=action_names, version=version
                    )
                except BackendUnavailable as exc:
                    why = f"library missing: {exc}"
                except PolicyLoadError as exc:
                    why = f"load error: {exc.problem}"
                except Exception as exc:  # an unexpected runtime failure: still try the next
                    why = f"load error: {type(exc).__name__}: {exc}"
                else:
                    if reasons:
                        log.warning(
                            "policy: using backend %s (%s) after skipping: %s",
                            backend,
                            name,
                            "; ".join(reasons),
                        )
                    else:
                        log.info("policy: using backend %s (%s)", backend, name)
                    return model, backend
        reasons.append(f"{backend}: {why}")
        log.warning("policy backend %s skipped: %s", backend, why)
    raise PolicyLoadError(root, "no usable policy backend: " + "; ".join(reasons))

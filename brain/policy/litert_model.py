"""A LiteRT (.tflite) step graph with the same interface as :class:`brain.policy.LoadedModel`.

The .tflite written by ``cloud_jobs export`` has one signature (``serving_default``) whose
inputs and outputs carry the contract's names (``image``, ``state``, ``memory`` ->
``action``, ``state_out``, ``memory_out``; ``docs/policy-contract.md``) and a ``continuon``
metadata entry (JSON: ``version``, ``action_names``).  The interpreter comes from
``ai_edge_litert`` or, where that is what is installed, ``tflite_runtime``; both are imported
only when a LiteRT model is loaded, so the daemon runs without either.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.digest import sha256_file

from .contract import (
    ACTION_OUTPUT,
    PolicyLoadError,
    RecurrentSpec,
    StepGraph,
    StepIO,
    TensorDecl,
    check_action_names,
    check_first_step,
    check_io,
    step_feeds,
)

log = logging.getLogger(__name__)

#: Name of the flatbuffer metadata entry holding our JSON (version, action_names, ...).
METADATA_NAME = "continuon"
SIGNATURE = "serving_default"


class LiteRTUnavailable(ImportError):
    """Neither ai_edge_litert nor tflite_runtime is installed."""


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, module it came from): ai_edge_litert first, then tflite_runtime."""
    errors = []
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            mod = __import__(module, fromlist=["Interpreter"])
            return mod.Interpreter, module.split(".")[0]
        except ImportError as exc:
            errors.append(f"{module}: {exc}")
    raise LiteRTUnavailable("no LiteRT interpreter installed (" + "; ".join(errors) + ")")


def read_tflite_metadata(path: Path) -> dict[str, Any]:
    """Our JSON metadata entry of a .tflite file ({} when absent or unreadable).

    Needs the flatbuffer schema shipped with ai_edge_litert; with tflite_runtime alone the
    metadata is skipped (the caller then names the model by its hash or the bundle's version).
    """
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return {}
    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                data = bytes(model.Buffers(entry.Buffer()).DataAsNumpy())
                value = json.loads(data.decode("utf-8"))
                return value if isinstance(value, dict) else {}
    except Exception as exc:  # a malformed entry must not stop the model from loading
        log.warning("policy %s: unreadable LiteRT metadata (%s)", path, exc)
    return {}


@dataclass(frozen=True, eq=False)
class LiteRTModel(StepGraph):
    """A validated, warmed-up .tflite step graph.  Build it with :func:`load_litert`.

    Same duck type as :class:`~brain.policy.LoadedModel` (``version``, ``action_size``,
    ``input_size``, ``recurrent``, ``initial_recurrent``, ``prepare_image``, ``step``).
    A TFLite interpreter is not thread-safe; ``step`` serialises calls with a lock.
    """

    runner: Any  # the interpreter's SignatureRunner
    interpreter: Any
    path: Path
    version: str
    sha256: str
    input_size: tuple[int, int]
    action_size: int
    recurrent: tuple[RecurrentSpec, ...]
    action_names: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 1
    backend: str = "litert_fp32"
    runtime: str = "ai_edge_litert"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def step(
        self, image: np.ndarray, recurrent: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step: (action float64 ``[A]``, next recurrent state); as ``LoadedModel.step``."""
        feeds = step_feeds(
            self.prepare_image(image),
            self.recurrent,
            self.initial_recurrent() if recurrent is None else recurrent,
        )
        with self._lock:
            outs = self.runner(**feeds)
            # The runner returns views into interpreter buffers: copy before the next call.
            action = np.array(outs[ACTION_OUTPUT], dtype=np.float32, copy=True)
            new_state = {
                s.name: np.array(outs[s.output_name], dtype=np.float32, copy=True)
                for s in self.recurrent
            }
        if action.shape != (1, self.action_size):
            raise ValueError(
                f"model returned action of shape {action.shape}, expected (1, {self.action_size})"
            )
        return action.reshape(-1).astype(np.float64), new_state


def _declared(name: str, details: Mapping[str, Any]) -> TensorDecl:
    """A signature runner's tensor details as the contract's description (-1: symbolic)."""
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    dims = tuple(None if int(d) < 0 else int(d) for d in shape)
    return TensorDecl(name, np.dtype(details["dtype"]).name, dims)


def _open(p: Path, interp_cls: type, threads: int) -> tuple[Any, Any]:
    """(interpreter, its serving_default runner); PolicyLoadError for a file it cannot use."""
    try:
        interp = interp_cls(model_path=str(p), num_threads=threads)
        sigs = interp.get_signature_list()
        if SIGNATURE not in sigs:
            raise PolicyLoadError(p, f"no {SIGNATURE!r} signature (signatures: {sorted(sigs)})")
        return interp, interp.get_signature_runner(SIGNATURE)
    except PolicyLoadError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolicyLoadError(p, f"not a loadable LiteRT model ({msg})") from exc


def _warm_up(p: Path, runner: Any, io: StepIO) -> None:
    """One step on a black image, its outputs checked as the model declared them."""
    feeds = step_feeds(
        np.zeros((1, *io.input_size, 3), np.uint8),
        io.recurrent,
        {s.name: s.zeros() for s in io.recurrent},
    )
    try:
        outs = runner(**feeds)
    except Exception as exc:
        raise PolicyLoadError(p, f"warm-up run failed: {exc}", "first-step") from exc
    check_first_step(p, io, [np.asarray(outs[name]) for name in io.output_names])
    if not np.isfinite(outs[ACTION_OUTPUT]).all():
        log.warning("policy %s: warm-up on a black image gave a non-finite action", p)


def load_litert(
    path: str | os.PathLike[str],
    threads: int = 1,
    *,
    action_names: Sequence[str] | None = None,
    version: str | None = None,
) -> LiteRTModel:
    """Open a .tflite step graph, check it against the contract and warm it up.

    Raises :class:`LiteRTUnavailable` when no interpreter is installed and
    :class:`PolicyLoadError` (naming the file) for anything wrong with the file.
    """
    p = Path(path)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    interp_cls, runtime = interpreter_class()
    if not p.is_file():
        raise PolicyLoadError(p, "no such file" if not p.exists() else "not a regular file")
    try:
        digest = sha256_file(p)
    except OSError as exc:
        raise PolicyLoadError(p, f"cannot be read: {exc}") from exc
    interp, runner = _open(p, interp_cls, threads)
    try:
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
    except Exception as exc:
        raise PolicyLoadError(p, f"not a loadable LiteRT model ({exc})") from exc
    # Inputs in name order: the signature's own order is not the graph's.
    io = check_io(
        p,
        [_declared(n, inputs[n]) for n in sorted(inputs)],
        [_declared(n, d) for n, d in outputs.items()],
    )
    if io.declared_actions is None:
        raise PolicyLoadError(p, "output 'action' must have a fixed size A", "action-shape")
    _warm_up(p, runner, io)
    metadata = read_tflite_metadata(p)
    names: tuple[str, ...] | None = None
    if isinstance(metadata.get("action_names"), list):
        names = tuple(str(n) for n in metadata["action_names"])
    check_action_names(p, names, io.declared_actions, action_names)
    return LiteRTModel(
        runner=runner,
        interpreter=interp,
        path=p,
        version=version or str(metadata.get("version") or "").strip() or digest[:12],
        sha256=digest,
        input_size=io.input_size,
        action_size=io.declared_actions,
        recurrent=io.recurrent,
        action_names=names
        if names is not None
        else (tuple(action_names) if action_names else None),
        metadata=metadata,
        threads=threads,
        runtime=runtime,
    )

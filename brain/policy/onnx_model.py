"""Loading an ONNX policy "step graph" and running one step of it.

The model contract (also in ``docs/policy-contract.md``)
--------------------------------------------------------

A policy is an ONNX graph that computes ONE control step:

inputs
    ``image``: uint8 ``[1, H, W, 3]``, RGB, raw pixel values.  Normalisation
    is inside the graph, so the runtime never needs to know the training
    statistics.  H and W must be fixed numbers; the batch dim may be 1 or
    symbolic (it is always fed as 1).

    Zero or more *recurrent* inputs (every input other than ``image``), float32,
    e.g. ``state`` and ``memory``.  All of their dims must be fixed numbers,
    except the first (batch) dim, which may be symbolic and is fed as 1.

outputs
    ``action``: float32 ``[1, A]``.

    For every recurrent input ``X``, an output ``X_out``, float32, of the same
    shape: the value of ``X`` for the next step.  Other outputs are ignored
    (they are not computed).

Recurrent inputs start at zeros.  The runtime feeds ``X_out`` of step t back
as ``X`` of step t+1, so all recurrence is explicit and the graph itself is
stateless.

Optional ``metadata_props`` of the ONNX model:

``version``
    The model's version string, shown in stats, telemetry and episodes.  When
    absent, the first 12 hex digits of the file's SHA-256 are used.
``action_names``
    Comma separated names of the action vector's entries, e.g.
    ``steering,throttle``.  Must have A entries; when the caller passes the
    robot's action names to :func:`load_model`, they must match exactly (a
    steering policy must never drive an arm, nor a car whose throttle and
    steering channels are swapped).

Only ``onnxruntime`` is needed at run time (not the ``onnx`` package, not torch).  The rules
above are checked by :mod:`brain.policy.contract`, the same check as for LiteRT models.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .contract import (
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

if TYPE_CHECKING:
    # onnxruntime costs ~30 MB and ~0.1 s at import: the daemon loads it with
    # the first model, not at start (a robot without a policy never needs it).
    import onnxruntime as ort

log = logging.getLogger(__name__)

# onnxruntime's type strings, as numpy names (the contract speaks numpy).
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


@dataclass(frozen=True, eq=False)
class LoadedModel(StepGraph):
    """A validated, warmed-up ONNX step graph.  Build it with :func:`load_model`.

    ``step`` is safe to call from one thread at a time per recurrent stream; the
    model itself keeps no state (the caller carries ``recurrent``).
    """

    session: ort.InferenceSession
    path: Path
    version: str
    sha256: str
    input_size: tuple[int, int]  # (H, W)
    action_size: int
    recurrent: tuple[RecurrentSpec, ...]
    action_names: tuple[str, ...] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    threads: int = 1

    def step(
        self, image: np.ndarray, recurrent: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one step: returns (action float64 ``[A]``, next recurrent state).

        ``recurrent`` None means the initial (zero) state.  Raises ValueError for
        a bad image or state and whatever onnxruntime raises if the run fails.
        """
        feeds = step_feeds(
            self.prepare_image(image),
            self.recurrent,
            self.initial_recurrent() if recurrent is None else recurrent,
        )
        outputs = self.session.run(self.output_names, feeds)
        action = outputs[0]
        if action.shape != (1, self.action_size):
            raise ValueError(
                f"model returned action of shape {action.shape}, expected (1, {self.action_size})"
            )
        new_state: dict[str, np.ndarray] = {}
        for spec, value in zip(self.recurrent, outputs[1:], strict=True):
            if value.shape != spec.shape:
                raise ValueError(
                    f"model returned {spec.output_name} of shape {value.shape}, "
                    f"expected {spec.shape}"
                )
            new_state[spec.name] = value
        return action.reshape(-1).astype(np.float64), new_state


def _make_session(path: Path, data: bytes, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only; we raise our own messages
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolicyLoadError(path, f"not a loadable ONNX model ({msg})") from exc


def _declared(arg: Any) -> TensorDecl:
    """An onnxruntime NodeArg as the contract's description (symbolic dims keep their name)."""
    dims = tuple(d if isinstance(d, int | str) else None for d in arg.shape)
    return TensorDecl(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)


def _read_checked(p: Path) -> bytes:
    """The file's bytes, refused unless they are one self-contained ONNX model."""
    if not p.is_file():
        raise PolicyLoadError(p, "no such file" if not p.exists() else "not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(p, f"cannot be read: {exc}") from exc
    # The bytes checked are the bytes run: no tensor may pull weights from another file.
    from brain.bundle.manifest import BundleError
    from brain.bundle.onnx_check import check_onnx_bytes

    try:
        check_onnx_bytes(data, p.name)
    except BundleError as exc:
        raise PolicyLoadError(p, str(exc).removeprefix(f"{p.name}: ")) from None
    return data


def _warm_up(p: Path, session: ort.InferenceSession, io: StepIO) -> int:
    """One step on a black image: allocates buffers and tells the real action size."""
    feeds = step_feeds(
        np.zeros((1, *io.input_size, 3), dtype=np.uint8),
        io.recurrent,
        {s.name: s.zeros() for s in io.recurrent},
    )
    try:
        outs = session.run(io.output_names, feeds)
    except Exception as exc:
        raise PolicyLoadError(p, f"warm-up run failed: {exc}", "first-step") from exc
    action_size = check_first_step(p, io, outs)
    if not np.isfinite(outs[0]).all():
        log.warning("policy %s: warm-up on a black image gave a non-finite action", p)
    return action_size


def load_model(
    path: str | os.PathLike[str],
    threads: int = 1,
    *,
    action_names: Sequence[str] | None = None,
    warmup: bool = True,
) -> LoadedModel:
    """Open an ONNX step graph, check it against the contract and warm it up.

    ``action_names``: the robot's action names; when given, the model's action
    size (and its ``action_names`` metadata, if any) must match them.
    Raises :class:`PolicyLoadError` naming the file and the problem.
    """
    p = Path(path)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    data = _read_checked(p)
    digest = hashlib.sha256(data).hexdigest()
    session = _make_session(p, data, threads)
    del data
    io = check_io(
        p,
        [_declared(i) for i in session.get_inputs()],
        [_declared(o) for o in session.get_outputs()],
    )
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    version = metadata.get("version", "").strip() or digest[:12]
    action_size = io.declared_actions
    if warmup or action_size is None:
        action_size = _warm_up(p, session, io)
    names: tuple[str, ...] | None = None
    if "action_names" in metadata:
        names = tuple(n.strip() for n in metadata["action_names"].split(",") if n.strip())
    check_action_names(p, names, action_size, action_names)

    model = LoadedModel(
        session=session,
        path=p,
        version=version,
        sha256=digest,
        input_size=io.input_size,
        action_size=action_size,
        recurrent=io.recurrent,
        action_names=names,
        metadata=metadata,
        threads=threads,
    )
    log.info(
        "policy %s loaded: version %s, input %dx%d, %d actions, recurrent %s, %d thread(s)",
        p,
        version,
        io.input_size[1],
        io.input_size[0],
        action_size,
        {s.name: s.shape for s in io.recurrent},
        threads,
    )
    return model

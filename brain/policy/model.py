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

Only ``onnxruntime`` is needed at run time (not the ``onnx`` package, not torch).
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

from brain.imaging import resize_rgb

if TYPE_CHECKING:
    # onnxruntime costs ~30 MB and ~0.1 s at import: the daemon loads it with
    # the first model, not at start (a robot without a policy never needs it).
    import onnxruntime as ort

log = logging.getLogger(__name__)

IMAGE_INPUT = "image"
ACTION_OUTPUT = "action"
RECURRENT_OUTPUT_SUFFIX = "_out"

_FLOAT = "tensor(float)"
_UINT8 = "tensor(uint8)"


class PolicyLoadError(RuntimeError):
    """A policy file cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"policy model {self.path}: {problem}")


@dataclass(frozen=True, slots=True)
class RecurrentSpec:
    """One recurrent input ``name`` (fed back from output ``output_name``)."""

    name: str
    shape: tuple[int, ...]
    output_name: str

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.float32)


class StepGraph:
    """What every backend's model derives from the step-graph contract alone.

    A mixin for the model dataclasses (ONNX, LiteRT), which provide the fields.
    """

    input_size: tuple[int, int]  # (H, W)
    recurrent: tuple[RecurrentSpec, ...]

    @property
    def output_names(self) -> list[str]:
        return [ACTION_OUTPUT, *(s.output_name for s in self.recurrent)]

    def initial_recurrent(self) -> dict[str, np.ndarray]:
        """Fresh zero recurrent state, one array per recurrent input."""
        return {s.name: s.zeros() for s in self.recurrent}

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB (any size) -> contiguous ``[1, H, W, 3]`` at the model's size."""
        return resize_rgb(image, self.input_size)[np.newaxis]


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


def _static_shape(path: Path, what: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """Shape with a symbolic batch dim replaced by 1; any other symbolic dim is an error."""
    out: list[int] = []
    for i, dim in enumerate(shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
        elif i == 0:
            out.append(1)  # dynamic batch: always fed as 1
        else:
            raise PolicyLoadError(
                path,
                f"{what} has a dynamic dimension {dim!r} at axis {i} (shape {list(shape)}); "
                "only the batch dimension (axis 0) may be dynamic",
            )
    return tuple(out)


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


def step_feeds(
    image_batch: np.ndarray,
    specs: Sequence[RecurrentSpec],
    recurrent: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """One step's graph inputs, for every backend; ValueError names a missing or misshapen state."""
    feeds: dict[str, np.ndarray] = {IMAGE_INPUT: image_batch}
    for spec in specs:
        try:
            value = recurrent[spec.name]
        except KeyError:
            raise ValueError(f"recurrent state {spec.name!r} missing") from None
        value = np.ascontiguousarray(value, dtype=np.float32)
        if value.shape != spec.shape:
            raise ValueError(
                f"recurrent state {spec.name!r} has shape {value.shape}, expected {spec.shape}"
            )
        feeds[spec.name] = value
    return feeds


def check_action_names(
    path: Path,
    names: tuple[str, ...] | None,
    action_size: int,
    robot_actions: Sequence[str] | None,
) -> None:
    """A model's declared action names must fit its output and this robot's actions.

    Shared by every backend: a steering policy must never drive an arm, nor a car whose
    channels are named differently, whatever format it came in.
    """
    if names is not None and len(names) != action_size:
        raise PolicyLoadError(
            path,
            f"metadata action_names {list(names)} has {len(names)} entries but the model "
            f"outputs {action_size} actions",
        )
    if robot_actions is None:
        return
    want = tuple(robot_actions)
    if names is not None and names != want:
        raise PolicyLoadError(
            path, f"model drives actions {list(names)} but this robot's actions are {list(want)}"
        )
    if action_size != len(want):
        raise PolicyLoadError(
            path,
            f"model outputs {action_size} actions but this robot has {len(want)} ({list(want)})",
        )


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
    if not p.is_file():
        raise PolicyLoadError(p, "no such file" if not p.exists() else "not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(p, f"cannot be read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    # The bytes checked are the bytes run: no tensor may pull weights from another file.
    from brain.bundle.manifest import BundleError
    from brain.bundle.onnx_check import check_onnx_bytes

    try:
        check_onnx_bytes(data, p.name)
    except BundleError as exc:
        raise PolicyLoadError(p, str(exc).removeprefix(f"{p.name}: ")) from None
    session = _make_session(p, data, threads)
    del data
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}

    # image
    img = inputs.get(IMAGE_INPUT)
    if img is None:
        raise PolicyLoadError(
            p, f"no input named {IMAGE_INPUT!r} (inputs are {sorted(inputs)}); see the contract"
        )
    if img.type != _UINT8:
        raise PolicyLoadError(p, f"input {IMAGE_INPUT!r} must be uint8, not {img.type}")
    if len(img.shape) != 4:
        raise PolicyLoadError(
            p, f"input {IMAGE_INPUT!r} must be [1, H, W, 3], got shape {list(img.shape)}"
        )
    img_shape = _static_shape(p, f"input {IMAGE_INPUT!r}", img.shape)
    if img_shape[0] != 1 or img_shape[3] != 3 or img_shape[1] < 1 or img_shape[2] < 1:
        raise PolicyLoadError(
            p, f"input {IMAGE_INPUT!r} must be [1, H, W, 3] (NHWC RGB), got {list(img.shape)}"
        )
    input_size = (img_shape[1], img_shape[2])

    # action
    act = outputs.get(ACTION_OUTPUT)
    if act is None:
        raise PolicyLoadError(
            p, f"no output named {ACTION_OUTPUT!r} (outputs are {sorted(outputs)})"
        )
    if act.type != _FLOAT:
        raise PolicyLoadError(p, f"output {ACTION_OUTPUT!r} must be float32, not {act.type}")
    if len(act.shape) != 2:
        raise PolicyLoadError(
            p, f"output {ACTION_OUTPUT!r} must be [1, A], got shape {list(act.shape)}"
        )
    declared_a = act.shape[1] if isinstance(act.shape[1], int) else None

    # recurrent inputs
    recurrent: list[RecurrentSpec] = []
    for name, meta in inputs.items():
        if name == IMAGE_INPUT:
            continue
        if meta.type != _FLOAT:
            raise PolicyLoadError(p, f"recurrent input {name!r} must be float32, not {meta.type}")
        shape = _static_shape(p, f"recurrent input {name!r}", meta.shape)
        if not shape or shape[0] != 1:
            raise PolicyLoadError(
                p, f"recurrent input {name!r} must have batch dimension 1, got {list(meta.shape)}"
            )
        out_name = name + RECURRENT_OUTPUT_SUFFIX
        out = outputs.get(out_name)
        if out is None:
            raise PolicyLoadError(
                p,
                f"recurrent input {name!r} has no matching output {out_name!r} "
                f"(outputs are {sorted(outputs)})",
            )
        if out.type != _FLOAT:
            raise PolicyLoadError(p, f"output {out_name!r} must be float32, not {out.type}")
        if len(out.shape) != len(shape) or any(
            isinstance(d, int) and d != s for d, s in zip(out.shape[1:], shape[1:], strict=True)
        ):
            raise PolicyLoadError(
                p,
                f"output {out_name!r} shape {list(out.shape)} does not match "
                f"input {name!r} shape {list(meta.shape)}",
            )
        recurrent.append(RecurrentSpec(name=name, shape=shape, output_name=out_name))

    metadata = dict(session.get_modelmeta().custom_metadata_map)
    version = metadata.get("version", "").strip() or digest[:12]

    # Warm-up run: allocates buffers, and tells the real action size and output shapes.
    output_names = [ACTION_OUTPUT, *(s.output_name for s in recurrent)]
    action_size = declared_a
    if warmup or declared_a is None:
        feeds = {IMAGE_INPUT: np.zeros((1, *input_size, 3), dtype=np.uint8)}
        feeds.update({s.name: s.zeros() for s in recurrent})
        try:
            outs = session.run(output_names, feeds)
        except Exception as exc:
            raise PolicyLoadError(p, f"warm-up run failed: {exc}") from exc
        a_out = outs[0]
        if (
            a_out.dtype != np.float32
            or a_out.ndim != 2
            or a_out.shape[0] != 1
            or a_out.shape[1] < 1
        ):
            raise PolicyLoadError(
                p,
                f"output {ACTION_OUTPUT!r} must be float32 [1, A], got {a_out.dtype} {a_out.shape}",
            )
        if declared_a is not None and a_out.shape[1] != declared_a:
            raise PolicyLoadError(
                p,
                f"output {ACTION_OUTPUT!r} declares {declared_a} actions "
                f"but returned {a_out.shape[1]}",
            )
        for spec, value in zip(recurrent, outs[1:], strict=True):
            if value.shape != spec.shape:
                raise PolicyLoadError(
                    p,
                    f"output {spec.output_name!r} returned shape {value.shape}, "
                    f"input {spec.name!r} has shape {spec.shape}",
                )
        action_size = int(a_out.shape[1])
        if not np.isfinite(a_out).all():
            log.warning("policy %s: warm-up on a black image gave a non-finite action", p)
    assert action_size is not None

    names: tuple[str, ...] | None = None
    if "action_names" in metadata:
        names = tuple(n.strip() for n in metadata["action_names"].split(",") if n.strip())
    check_action_names(p, names, action_size, action_names)

    model = LoadedModel(
        session=session,
        path=p,
        version=version,
        sha256=digest,
        input_size=input_size,
        action_size=action_size,
        recurrent=tuple(recurrent),
        action_names=names,
        metadata=metadata,
        threads=threads,
    )
    log.info(
        "policy %s loaded: version %s, input %dx%d, %d actions, recurrent %s, %d thread(s)",
        p,
        version,
        input_size[1],
        input_size[0],
        action_size,
        {s.name: s.shape for s in recurrent},
        threads,
    )
    return model

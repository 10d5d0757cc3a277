"""The step-graph contract (``docs/policy-contract.md``), checked ONCE for every backend.

A backend (ONNX Runtime, LiteRT) describes what its model declares -- each input and output
as a :class:`TensorDecl` (name, numpy dtype name, shape with None for a symbolic dim) -- and
:func:`check_io` decides, by the same rules for every format, whether the robot may run it
and what the runtime derives from it (image size, recurrent state, declared action size).
:func:`check_first_step` then judges the warm-up step's real outputs.  A refusal is a
:class:`PolicyLoadError` whose ``rule`` names the broken rule (one of :data:`RULES`) and
whose message names the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brain.imaging import resize_rgb

IMAGE_INPUT = "image"
ACTION_OUTPUT = "action"
RECURRENT_OUTPUT_SUFFIX = "_out"

#: Every rule a model can break, by name (``PolicyLoadError.rule``).
RULES = {
    "image-input": "an input named 'image'",
    "image-uint8": "'image' is uint8",
    "image-nhwc": "'image' is [1, H, W, 3]",
    "static-dims": "only the batch dimension (axis 0) may be symbolic",
    "action-output": "an output named 'action'",
    "action-float32": "'action' is float32",
    "action-shape": "'action' is [1, A]",
    "recurrent-float32": "every other input is float32",
    "recurrent-batch": "every other input has batch dimension 1",
    "recurrent-output": "every other input X has an output X_out",
    "recurrent-output-float32": "X_out is float32",
    "recurrent-output-shape": "X_out has the shape of X",
    "action-names": "the action names fit the output and this robot",
    "first-step": "the warm-up step returns what the model declares",
}


class PolicyLoadError(RuntimeError):
    """A policy file cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str, rule: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.rule = rule
        named = f" (contract rule {rule})" if rule else ""
        super().__init__(f"policy model {self.path}: {problem}{named}")


#: A declared dimension: a number, or symbolic (its name where the format has one, else None).
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """One input or output as the backend declares it."""

    name: str
    dtype: str  # numpy's name ("uint8", "float32"), or the backend's own for anything else
    shape: tuple[Dim, ...]


@dataclass(frozen=True, slots=True)
class RecurrentSpec:
    """One recurrent input ``name`` (fed back from output ``output_name``)."""

    name: str
    shape: tuple[int, ...]
    output_name: str

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class StepIO:
    """What the runtime takes from a model's declared inputs and outputs."""

    input_size: tuple[int, int]  # (H, W)
    declared_actions: int | None  # None: symbolic, known after the warm-up step
    recurrent: tuple[RecurrentSpec, ...]

    @property
    def output_names(self) -> list[str]:
        return [ACTION_OUTPUT, *(s.output_name for s in self.recurrent)]


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


def _fixed(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and dim >= 0 else None


def _static_shape(path: str, what: str, shape: Sequence[Dim]) -> tuple[int, ...]:
    """Shape with a symbolic batch dim replaced by 1; any other symbolic dim is refused."""
    out: list[int] = []
    for i, dim in enumerate(shape):
        fixed = _fixed(dim)
        if fixed is not None:
            out.append(fixed)
        elif i == 0:
            out.append(1)  # dynamic batch: always fed as 1
        else:
            raise PolicyLoadError(
                path,
                f"{what} has a dynamic dimension {dim!r} at axis {i} (shape {_show(shape)}); "
                "only the batch dimension (axis 0) may be dynamic",
                "static-dims",
            )
    return tuple(out)


def _show(shape: Sequence[Dim]) -> list[int | str]:
    return ["?" if d is None else d for d in shape]


def _image(path: str, img: TensorDecl | None, inputs: Mapping[str, TensorDecl]) -> tuple[int, int]:
    if img is None:
        raise PolicyLoadError(
            path,
            f"no input named {IMAGE_INPUT!r} (inputs are {sorted(inputs)}); see the contract",
            "image-input",
        )
    if img.dtype != "uint8":
        raise PolicyLoadError(
            path, f"input {IMAGE_INPUT!r} must be uint8, not {img.dtype}", "image-uint8"
        )
    if len(img.shape) != 4:
        raise PolicyLoadError(
            path,
            f"input {IMAGE_INPUT!r} must be [1, H, W, 3], got shape {_show(img.shape)}",
            "image-nhwc",
        )
    shape = _static_shape(path, f"input {IMAGE_INPUT!r}", img.shape)
    if shape[0] != 1 or shape[3] != 3 or shape[1] < 1 or shape[2] < 1:
        raise PolicyLoadError(
            path,
            f"input {IMAGE_INPUT!r} must be [1, H, W, 3] (NHWC RGB), got {_show(img.shape)}",
            "image-nhwc",
        )
    return shape[1], shape[2]


def _action(path: str, act: TensorDecl | None, outputs: Mapping[str, TensorDecl]) -> int | None:
    if act is None:
        raise PolicyLoadError(
            path,
            f"no output named {ACTION_OUTPUT!r} (outputs are {sorted(outputs)})",
            "action-output",
        )
    if act.dtype != "float32":
        raise PolicyLoadError(
            path, f"output {ACTION_OUTPUT!r} must be float32, not {act.dtype}", "action-float32"
        )
    batch, actions = (_fixed(d) for d in act.shape) if len(act.shape) == 2 else (0, 0)
    if len(act.shape) != 2 or batch not in (None, 1) or actions == 0:
        raise PolicyLoadError(
            path,
            f"output {ACTION_OUTPUT!r} must be [1, A], got shape {_show(act.shape)}",
            "action-shape",
        )
    return actions


def _recurrent(path: str, inp: TensorDecl, outputs: Mapping[str, TensorDecl]) -> RecurrentSpec:
    name = inp.name
    if inp.dtype != "float32":
        raise PolicyLoadError(
            path,
            f"recurrent input {name!r} must be float32, not {inp.dtype}",
            "recurrent-float32",
        )
    shape = _static_shape(path, f"recurrent input {name!r}", inp.shape)
    if not shape or shape[0] != 1:
        raise PolicyLoadError(
            path,
            f"recurrent input {name!r} must have batch dimension 1, got {_show(inp.shape)}",
            "recurrent-batch",
        )
    out_name = name + RECURRENT_OUTPUT_SUFFIX
    out = outputs.get(out_name)
    if out is None:
        raise PolicyLoadError(
            path,
            f"recurrent input {name!r} has no matching output {out_name!r} "
            f"(outputs are {sorted(outputs)})",
            "recurrent-output",
        )
    if out.dtype != "float32":
        raise PolicyLoadError(
            path,
            f"output {out_name!r} must be float32, not {out.dtype}",
            "recurrent-output-float32",
        )
    if len(out.shape) != len(shape) or any(
        _fixed(d) not in (None, s) for d, s in zip(out.shape[1:], shape[1:], strict=True)
    ):
        raise PolicyLoadError(
            path,
            f"output {out_name!r} shape {_show(out.shape)} does not match "
            f"input {name!r} shape {_show(inp.shape)}",
            "recurrent-output-shape",
        )
    return RecurrentSpec(name=name, shape=shape, output_name=out_name)


def check_io(
    path: str | os.PathLike[str],
    inputs: Sequence[TensorDecl],
    outputs: Sequence[TensorDecl],
) -> StepIO:
    """The contract's rules on a model's declared inputs and outputs (in the given order)."""
    p = str(path)
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    input_size = _image(p, ins.get(IMAGE_INPUT), ins)
    declared = _action(p, outs.get(ACTION_OUTPUT), outs)
    recurrent = tuple(_recurrent(p, t, outs) for t in inputs if t.name != IMAGE_INPUT)
    return StepIO(input_size, declared, recurrent)


def check_first_step(
    path: str | os.PathLike[str], io: StepIO, outputs: Sequence[np.ndarray]
) -> int:
    """The warm-up step's outputs (action, then each ``X_out``) against the declaration;
    returns the real action size."""
    p = str(path)
    action = outputs[0]
    if (
        action.dtype != np.float32
        or action.ndim != 2
        or action.shape[0] != 1
        or action.shape[1] < 1
    ):
        raise PolicyLoadError(
            p,
            f"output {ACTION_OUTPUT!r} must be float32 [1, A], got {action.dtype} {action.shape}",
            "first-step",
        )
    if io.declared_actions is not None and action.shape[1] != io.declared_actions:
        raise PolicyLoadError(
            p,
            f"output {ACTION_OUTPUT!r} declares {io.declared_actions} actions "
            f"but returned {action.shape[1]}",
            "first-step",
        )
    for spec, value in zip(io.recurrent, outputs[1:], strict=True):
        if value.shape != spec.shape:
            raise PolicyLoadError(
                p,
                f"output {spec.output_name!r} returned shape {value.shape}, "
                f"input {spec.name!r} has shape {spec.shape}",
                "first-step",
            )
    return int(action.shape[1])


def check_action_names(
    path: str | os.PathLike[str],
    names: tuple[str, ...] | None,
    action_size: int,
    robot_actions: Sequence[str] | None,
) -> None:
    """A model's declared action names must fit its output and this robot's actions.

    A steering policy must never drive an arm, nor a car whose channels are named
    differently, whatever format it came in.
    """
    if names is not None and len(names) != action_size:
        raise PolicyLoadError(
            path,
            f"metadata action_names {list(names)} has {len(names)} entries but the model "
            f"outputs {action_size} actions",
            "action-names",
        )
    if robot_actions is None:
        return
    want = tuple(robot_actions)
    if names is not None and names != want:
        raise PolicyLoadError(
            path,
            f"model drives actions {list(names)} but this robot's actions are {list(want)}",
            "action-names",
        )
    if action_size != len(want):
        raise PolicyLoadError(
            path,
            f"model outputs {action_size} actions but this robot has {len(want)} ({list(want)})",
            "action-names",
        )


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

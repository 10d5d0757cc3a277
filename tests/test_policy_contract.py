"""The one step-graph contract check (brain.policy.contract), through both loaders.

Each case is a model that breaks one rule of docs/policy-contract.md.  The ONNX loader gets
a real .onnx file (built with the ``onnx`` package, run by the real onnxruntime); the LiteRT
loader gets an interpreter stand-in at its library boundary (``interpreter_class``) that
declares the same inputs and outputs.  Both must refuse it naming the same rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brain.policy import litert_model
from brain.policy.contract import RULES, PolicyLoadError, TensorDecl, check_io
from brain.policy.onnx_model import load_model

onnx = pytest.importorskip("onnx")

Shape = tuple[int | str, ...]
Decl = tuple[str, str, Shape]  # name, numpy dtype name, shape (str: symbolic)

INPUTS: list[Decl] = [("image", "uint8", (1, 24, 32, 3)), ("state", "float32", (1, 4))]
OUTPUTS: list[Decl] = [("action", "float32", (1, 2)), ("state_out", "float32", (1, 4))]


def _swap(decls: list[Decl], name: str, new: Decl) -> list[Decl]:
    return [new if d[0] == name else d for d in decls]


# rule -> (inputs, outputs, words of the message)
CASES: dict[str, tuple[list[Decl], list[Decl], str]] = {
    "image-input": (_swap(INPUTS, "image", ("img", "uint8", (1, 24, 32, 3))), OUTPUTS,
                    "no input named 'image'"),
    "image-uint8": (_swap(INPUTS, "image", ("image", "float32", (1, 24, 32, 3))), OUTPUTS,
                    "input 'image' must be uint8, not float32"),
    "image-nhwc": (_swap(INPUTS, "image", ("image", "uint8", (1, 3, 24, 32))), OUTPUTS,
                   "must be [1, H, W, 3] (NHWC RGB)"),
    "static-dims": (_swap(INPUTS, "state", ("state", "float32", (1, "n"))),
                    _swap(OUTPUTS, "state_out", ("state_out", "float32", (1, "n"))),
                    "dynamic dimension"),
    "action-output": (INPUTS, _swap(OUTPUTS, "action", ("act", "float32", (1, 2))),
                      "no output named 'action'"),
    "action-float32": (INPUTS, _swap(OUTPUTS, "action", ("action", "float64", (1, 2))),
                       "output 'action' must be float32, not float64"),
    "action-shape": (INPUTS, _swap(OUTPUTS, "action", ("action", "float32", (1, 2, 1))),
                     "output 'action' must be [1, A]"),
    "recurrent-float32": (_swap(INPUTS, "state", ("state", "float64", (1, 4))),
                          _swap(OUTPUTS, "state_out", ("state_out", "float64", (1, 4))),
                          "recurrent input 'state' must be float32"),
    "recurrent-batch": (_swap(INPUTS, "state", ("state", "float32", (2, 4))),
                        _swap(OUTPUTS, "state_out", ("state_out", "float32", (2, 4))),
                        "must have batch dimension 1"),
    "recurrent-output": (INPUTS, _swap(OUTPUTS, "state_out", ("state_next", "float32", (1, 4))),
                         "'state' has no matching output 'state_out'"),
    "recurrent-output-float32": (INPUTS,
                                 _swap(OUTPUTS, "state_out", ("state_out", "float64", (1, 4))),
                                 "output 'state_out' must be float32"),
    "recurrent-output-shape": (INPUTS,
                               _swap(OUTPUTS, "state_out", ("state_out", "float32", (1, 5))),
                               "does not match input 'state'"),
}  # fmt: skip

_ONNX_TYPES = {"uint8": 2, "float32": 1, "float64": 11}  # onnx.TensorProto element types


def _concrete(shape: Shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else 1 for d in shape)


def build_onnx(
    path: Path, inputs: list[Decl], outputs: list[Decl], grow_state: bool = False
) -> Path:
    """A valid ONNX graph declaring exactly these inputs and outputs; each output is a
    constant.  ``grow_state``: ``state_out`` is ``state`` tiled twice along axis 1, by repeats
    computed from the state itself, so no shape inference can know it before the run."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> Any:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))

    nodes = [
        const(name, np.zeros(_concrete(shape), dtype=dtype))
        for name, dtype, shape in outputs
        if not (grow_state and name == "state_out")
    ]
    if grow_state:
        nodes += [
            helper.make_node("ReduceSum", ["state"], ["total"], keepdims=0),
            const("zero", np.array(0.0, np.float32)),
            const("twice", np.array([1.0, 2.0], np.float32)),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "twice"], ["reps_f"]),
            helper.make_node("Cast", ["reps_f"], ["reps"], to=TensorProto.INT64),
            helper.make_node("Tile", ["state", "reps"], ["state_out"]),
        ]

    def info(d: Decl) -> Any:
        return helper.make_tensor_value_info(d[0], _ONNX_TYPES[d[1]], list(d[2]))

    ins, outs = [info(d) for d in inputs], [info(d) for d in outputs]
    graph = helper.make_graph(nodes, "contract", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class FakeLiteRT:
    """An interpreter stand-in whose serving_default runner declares ``inputs``/``outputs``
    as ai_edge_litert reports them (numpy dtype classes, shape and shape_signature arrays,
    -1 where symbolic) and returns zeros (``produced`` may make one differ)."""

    def __init__(self, inputs: list[Decl], outputs: list[Decl], **produced: Shape) -> None:
        self.inputs, self.outputs, self.produced = inputs, outputs, produced

    # -- the Interpreter "class": called with the file, it is the interpreter
    def __call__(self, *, model_path: str, num_threads: int) -> FakeLiteRT:
        assert Path(model_path).is_file() and num_threads >= 1
        return self

    def get_signature_list(self) -> dict[str, Any]:
        return {"serving_default": {"inputs": [], "outputs": []}}

    def get_signature_runner(self, name: str) -> Runner:
        return Runner(self)


class Runner:
    def __init__(self, model: FakeLiteRT) -> None:
        self.model = model

    @staticmethod
    def details(decls: list[Decl]) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "shape": np.array(_concrete(shape), np.int32),
                "shape_signature": np.array(
                    [d if isinstance(d, int) else -1 for d in shape], np.int32
                ),
                "dtype": np.dtype(dtype).type,
            }
            for name, dtype, shape in decls
        }

    def get_input_details(self) -> dict[str, dict[str, Any]]:
        return self.details(self.model.inputs)

    def get_output_details(self) -> dict[str, dict[str, Any]]:
        return self.details(self.model.outputs)

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        assert set(feeds) == {name for name, _, _ in self.model.inputs}
        return {
            name: np.zeros(_concrete(self.model.produced.get(name, shape)), dtype=dtype)
            for name, dtype, shape in self.model.outputs
        }


def load_fake_litert(
    monkeypatch: pytest.MonkeyPatch, path: Path, fake: FakeLiteRT, **kwargs: Any
) -> Any:
    monkeypatch.setattr(litert_model, "interpreter_class", lambda: (fake, "fake"))
    path.write_bytes(b"TFL3 stand-in")
    return litert_model.load_litert(path, **kwargs)


def test_every_rule_has_a_case_here_or_below() -> None:
    assert set(RULES) == {*CASES, "action-names", "first-step"}


def test_the_valid_description_loads_with_both_loaders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = load_model(build_onnx(tmp_path / "ok.onnx", INPUTS, OUTPUTS))
    lite = load_fake_litert(monkeypatch, tmp_path / "ok.tflite", FakeLiteRT(INPUTS, OUTPUTS))
    for model in (m, lite):
        assert model.input_size == (24, 32) and model.action_size == 2
        assert [(s.name, s.shape, s.output_name) for s in model.recurrent] == [
            ("state", (1, 4), "state_out")
        ]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_is_refused_by_both_loaders_naming_it(
    rule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, outputs, words = CASES[rule]
    onnx_file = build_onnx(tmp_path / "bad.onnx", inputs, outputs)
    with pytest.raises(PolicyLoadError) as onnx_err:
        load_model(onnx_file)
    with pytest.raises(PolicyLoadError) as lite_err:
        load_fake_litert(monkeypatch, tmp_path / "bad.tflite", FakeLiteRT(inputs, outputs))
    for err, path in ((onnx_err.value, onnx_file), (lite_err.value, tmp_path / "bad.tflite")):
        assert err.rule == rule, str(err)
        assert words in str(err) and f"(contract rule {rule})" in str(err)
        assert str(path) in str(err)


def test_first_step_and_action_names_are_refused_by_both_loaders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The warm-up step returns a recurrent output of another shape than its input's (its
    # declaration left that dim open, so only the step itself can tell).
    outputs = _swap(OUTPUTS, "state_out", ("state_out", "float32", (1, "k")))
    produced: dict[str, Shape] = {"state_out": (1, 8)}
    onnx_file = build_onnx(tmp_path / "step.onnx", INPUTS, outputs, grow_state=True)
    lite_file = tmp_path / "step.tflite"
    with pytest.raises(PolicyLoadError, match="returned shape") as onnx_err:
        load_model(onnx_file)
    with pytest.raises(PolicyLoadError, match="returned shape") as lite_err:
        load_fake_litert(monkeypatch, lite_file, FakeLiteRT(INPUTS, outputs, **produced))
    assert onnx_err.value.rule == lite_err.value.rule == "first-step"
    # Two actions for a robot with three.
    names = ("steering", "throttle", "arm")
    with pytest.raises(PolicyLoadError, match="outputs 2 actions but this robot has 3") as e1:
        load_model(build_onnx(tmp_path / "ok.onnx", INPUTS, OUTPUTS), action_names=names)
    with pytest.raises(PolicyLoadError, match="outputs 2 actions but this robot has 3") as e2:
        load_fake_litert(monkeypatch, lite_file, FakeLiteRT(INPUTS, OUTPUTS), action_names=names)
    assert e1.value.rule == e2.value.rule == "action-names"


def test_symbolic_batch_is_fed_as_one() -> None:
    io = check_io(
        "m",
        [TensorDecl("image", "uint8", ("N", 24, 32, 3)), TensorDecl("mem", "float32", (None, 8))],
        [TensorDecl("action", "float32", ("N", None)), TensorDecl("mem_out", "float32", (None, 8))],
    )
    assert io.input_size == (24, 32) and io.declared_actions is None
    assert io.recurrent[0].shape == (1, 8)

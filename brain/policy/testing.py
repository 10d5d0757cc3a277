"""Small ONNX step graphs and model doubles, for tests and benchmarks only.

The graph builders need the ``onnx`` package, which is in the ``dev`` extra
(``pip install -e .[dev]``) and is NOT a run-time dependency of the daemon:
it is imported lazily inside the builder functions, so importing this module
is harmless where ``onnx`` is absent.

:func:`build_dummy_policy` writes a graph that follows the policy contract of
:mod:`brain.policy.onnx_model`::

    image uint8 [1,H,W,3] -> Cast -> (x/255 - 0.5) -> NCHW -> Conv 3x3/2 (8 ch) -> ReLU
          -> GlobalAveragePool -> features f [1,8]
    state_out  = 0.9 * state  + tanh(f @ Wfs)
    memory_out = 0.95 * memory + 0.1 * tanh([f, state] @ Wm)
    action     = tanh(f @ Wfa + state_out @ Wsa + memory_out @ Wma) + bias

so the action depends on the carried state (feeding one image twice gives two
different actions) and two models can be told apart by ``bias``.
:func:`reference_step` computes the same step in numpy, to check a graph.

:class:`FaultyModel` wraps a real :class:`~brain.policy.onnx_model.LoadedModel` and
makes chosen calls slow, NaN or raising: a double for the *model*, used to test
the runner (the thing under test) against misbehaving models.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_model import LoadedModel

_FEATURES = 8


def dummy_weights(
    state_size: int, memory_size: int, action_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The (seeded, deterministic) weights :func:`build_dummy_policy` uses."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "conv_w": w(_FEATURES, 3, 3, 3, scale=0.5),
        "conv_b": w(_FEATURES, scale=0.1),
        "wfa": w(_FEATURES, action_size, scale=1.0),
        "wfs": w(_FEATURES, max(state_size, 1), scale=1.0),
        "wsa": w(max(state_size, 1), action_size, scale=0.5 / np.sqrt(max(state_size, 1))),
        "wm": w(_FEATURES + state_size, max(memory_size, 1), scale=1.0),
        "wma": w(max(memory_size, 1), action_size, scale=0.5 / np.sqrt(max(memory_size, 1))),
    }


def build_dummy_policy(
    path: str | os.PathLike[str],
    *,
    height: int = 120,
    width: int = 160,
    action_size: int = 2,
    state_size: int = 32,
    memory_size: int = 64,
    conv: bool = True,
    bias: float = 0.0,
    nan: bool = False,
    seed: int = 0,
    version: str | None = None,
    action_names: str | None = None,
    metadata: dict[str, str] | None = None,
    image_name: str = "image",
    image_dtype: str = "uint8",
    recurrent_output_suffix: str = "_out",
    batch_dim: int | str = 1,
    dynamic_state: bool = False,
) -> Path:
    """Write a small step graph to ``path`` and return the path.

    ``state_size``/``memory_size`` 0 leaves that recurrent input out.  With
    ``conv=False`` the features are just the per-channel image mean (cheaper).
    ``nan=True`` adds NaN to the action.  The remaining keywords exist to build
    graphs that break the contract on purpose: ``image_name``, ``image_dtype``
    ("uint8" or "float32"), ``recurrent_output_suffix``, ``dynamic_state`` (a
    symbolic non-batch dim on ``state``); ``batch_dim`` may be a symbol, which
    the contract allows.
    """
    import onnx  # dev extra only
    from onnx import TensorProto, helper

    wts = dummy_weights(state_size, memory_size, action_size, seed)
    g = _Graph()
    const, node = g.const, g.node

    img_type = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[image_dtype]
    inputs = [helper.make_tensor_value_info(image_name, img_type, [batch_dim, height, width, 3])]
    outputs = [helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch_dim, action_size])]
    feat = _image_features(g, image_name, conv, wts)

    pre = node("MatMul", [feat, const("wfa", wts["wfa"])], "pre_f")
    if state_size:
        dims: list[int | str] = [batch_dim, "state_dim" if dynamic_state else state_size]
        inputs.append(helper.make_tensor_value_info("state", TensorProto.FLOAT, dims))
        s_out = "state" + recurrent_output_suffix
        outputs.append(helper.make_tensor_value_info(s_out, TensorProto.FLOAT, dims))
        decay = node("Mul", ["state", const("s_decay", 0.9)], "s_decay_out")
        drive = node("Tanh", [node("MatMul", [feat, const("wfs", wts["wfs"])], "s_mm")], "s_drive")
        node("Add", [decay, drive], s_out)
        pre = node("Add", [pre, node("MatMul", [s_out, const("wsa", wts["wsa"])], "pre_s")], "pre2")
    if memory_size:
        dims = [batch_dim, memory_size]
        inputs.append(helper.make_tensor_value_info("memory", TensorProto.FLOAT, dims))
        m_out = "memory" + recurrent_output_suffix
        outputs.append(helper.make_tensor_value_info(m_out, TensorProto.FLOAT, dims))
        m_in = node("Concat", [feat, "state"], "m_in", axis=1) if state_size else feat
        m_mm = node("MatMul", [m_in, const("wm", wts["wm"])], "m_mm")
        m_drive = node("Mul", [node("Tanh", [m_mm], "m_tanh"), const("m_gain", 0.1)], "m_drive")
        m_decay = node("Mul", ["memory", const("m_decay", 0.95)], "m_decay_out")
        node("Add", [m_decay, m_drive], m_out)
        pre = node("Add", [pre, node("MatMul", [m_out, const("wma", wts["wma"])], "pre_m")], "pre3")
    act = node("Tanh", [pre], "act_tanh")
    if nan:
        act = node("Add", [act, const("nan", float("nan"))], "act_nan")
    node("Add", [act, const("bias", bias)], "action")

    graph = helper.make_graph(g.nodes, "dummy_policy", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="brain.policy.testing"
    )
    model.ir_version = 8
    props = dict(metadata or {})
    if version is not None:
        props["version"] = version
    if action_names is not None:
        props["action_names"] = action_names
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


class _Graph:
    """The nodes and initializers of the graph being built."""

    def __init__(self) -> None:
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def int64(self, name: str, values: list[int]) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def node(self, op: str, ins: list[str], out: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out


def _image_features(g: _Graph, image_name: str, conv: bool, wts: dict[str, np.ndarray]) -> str:
    """uint8 NHWC image -> (N, _FEATURES) features, normalised inside the graph like the model."""
    from onnx import TensorProto

    const, node = g.const, g.node
    x = node("Cast", [image_name], "x_f", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("inv255", 1.0 / 255.0)], "x_scaled")
    x = node("Sub", [x, const("half", 0.5)], "x_norm")
    x = node("Transpose", [x], "x_nchw", perm=[0, 3, 1, 2])
    if conv:
        x = node(
            "Conv",
            [x, const("conv_w", wts["conv_w"]), const("conv_b", wts["conv_b"])],
            "conv",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
        x = node("Relu", [x], "relu")
    x = node("GlobalAveragePool", [x], "pooled")
    feat = node("Reshape", [x, g.int64("flat_shape", [0, -1])], "features")
    if not conv:  # 3 channels -> _FEATURES by repetition, to keep the weights' shapes
        feat = node("Tile", [feat, g.int64("rep", [1, 3])], "features_tiled")
        starts, ends = g.int64("starts", [0]), g.int64("ends", [_FEATURES])
        feat = node("Slice", [feat, starts, ends, g.int64("axes", [1])], "features_8")
    return feat


def reference_step(
    image: np.ndarray,
    state: np.ndarray | None,
    memory: np.ndarray | None,
    *,
    action_size: int = 2,
    state_size: int = 32,
    memory_size: int = 64,
    bias: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """numpy version of the ``conv=True`` dummy graph for an image at the model's size."""
    wts = dummy_weights(state_size, memory_size, action_size, seed)
    x = image.astype(np.float32) / 255.0 - 0.5  # H W 3
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    oh, ow = (h + 1) // 2, (w + 1) // 2
    conv = np.zeros((oh, ow, _FEATURES), dtype=np.float64)
    for ky in range(3):
        for kx in range(3):
            patch = xp[ky : ky + 2 * oh : 2, kx : kx + 2 * ow : 2, :]  # oh ow 3
            conv += patch @ wts["conv_w"][:, :, ky, kx].T
    conv += wts["conv_b"]
    f = np.maximum(conv, 0).mean(axis=(0, 1))[None, :]
    pre = f @ wts["wfa"]
    s_out: np.ndarray | None = None
    m_out: np.ndarray | None = None
    if state_size:
        if state is None:
            raise ValueError("a graph with recurrent state needs the state")
        s_out = 0.9 * state + np.tanh(f @ wts["wfs"])
        pre = pre + s_out @ wts["wsa"]
    if memory_size:
        if memory is None:
            raise ValueError("a graph with memory needs the memory")
        m_in = np.concatenate([f, state], axis=1) if state is not None and state_size else f
        m_out = 0.95 * memory + 0.1 * np.tanh(m_in @ wts["wm"])
        pre = pre + m_out @ wts["wma"]
    return np.tanh(pre)[0] + bias, s_out, m_out


@dataclass(frozen=True, eq=False)
class FaultyModel(LoadedModel):
    """A LoadedModel whose chosen calls (0-based, counted per instance) misbehave.

    ``delay_s`` is slept before the calls in ``delay_on`` (None: every call);
    calls in ``nan_on`` return a NaN action (the state they produce is real);
    calls in ``raise_on`` raise RuntimeError.  ``on_call`` is called with the
    call index first (e.g. to block on an Event).  Build with :meth:`wrap`.
    """

    delay_s: float = 0.0
    delay_on: Collection[int] | None = None
    nan_on: Collection[int] = ()
    raise_on: Collection[int] = ()
    on_call: Callable[[int], None] | None = None
    _counter: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @classmethod
    def wrap(cls, inner: LoadedModel, **faults: Any) -> FaultyModel:
        base = {f.name: getattr(inner, f.name) for f in fields(LoadedModel)}
        return cls(**base, **faults)

    def step(
        self, image: np.ndarray, recurrent: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        i = next(self._counter)
        if self.on_call is not None:
            self.on_call(i)
        if self.delay_s and (self.delay_on is None or i in self.delay_on):
            time.sleep(self.delay_s)
        if i in self.raise_on:
            raise RuntimeError(f"injected failure on call {i}")
        action, state = super().step(image, recurrent)
        if i in self.nan_on:
            action = np.full_like(action, np.nan)
        return action, state

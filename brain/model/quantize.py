"""INT8 static quantization of an exported ONNX step graph (``onnxruntime.quantization``).

Torch-free on purpose: the robot's local fine-tuning job and ``cloud_jobs export`` both call
:func:`quantize_int8` on an FP32 step graph written by :func:`brain.model.export_onnx`.

What gets quantized, and why (measured on the ``pi5`` preset, one thread, VNNI CPU; see
``docs/export.md``):

* ``Conv`` and ``Gemm`` (the encoder convolutions and every ``nn.Linear``): that is where the
  multiply-adds are.  Weights int8, activations uint8.  Per output channel for convolutions
  (a folded BatchNorm gives every channel its own scale), per tensor for ``Gemm``: at batch 1
  ONNX Runtime's int8 GEMM ran ~25 % slower with per-channel weights (the closed-loop gate
  judges the accuracy either way).
* ``Relu``: quantized, it disappears -- ONNX Runtime folds it into the uint8 output range of
  the conv/GEMM before it, which then writes straight into the next int8 op (with SiLU or
  GroupNorm in between, every quantized op needed a Dequantize, a float op and a Quantize,
  and INT8 stayed ~1.3x faster than FP32 instead of ~1.6x; see ``docs/export.md``).
* NOT the first convolution: with 3 input channels an int8 kernel has nothing to vectorise
  over, and quantizing it pulls the image off ONNX Runtime's fast NCHWc path; it made the
  whole step ~2x *slower* than FP32.
* NOT ``MatMul``: those are the associative memory's tiny ``M k`` / ``M q`` products and the
  keypoint read-out, whose operands are recurrent state.  Quantizing them buys no time and
  puts 8-bit rounding into a state that is carried (and compounds) from tick to tick.
* NOT the action head (``/head/`` scope) nor the memory's projections (``/memory/``): they
  are small (a few % of the step), and the closed-loop gate showed why they matter -- with
  the head quantized, a trained pi5 policy whose held-out action error was only 0.9 %
  worse left the road on the ``snake`` layout; with head and memory in FP32 it drove
  exactly like FP32 (0.0 % closed-loop drop) at the same speed-up.

* NOT the encoder's projection (``/encoder/proj/``): its input is the spatial-softmax
  keypoints -- *where* the lane edges are, coordinates in [-1, 1] -- concatenated with pooled
  features of a much larger range; one uint8 scale for both rounds the keypoints to a few
  centimetres of road.  With it quantized, a trained pi5 policy held the lane 4.4 % worse than
  FP32 (mean |cte| 22.8 vs 21.8 mm on chicane, snake, random-101: the 2 % gate failed it)
  although its held-out action error was only 0.2 % worse; kept in FP32 (a 128 -> 256 GEMM,
  ~1 % of the step) it drove like FP32 (21.8 mm, -0.1 %).

Calibration runs the FP32 graph over the frames *in order*, carrying its recurrent state, so
the recurrent core is calibrated on the states it really meets on the road, not on zeros.
Ranges are the 0.001-99.999 percentiles of each activation (ORT's Percentile calibrator),
not min/max: with min/max a few outlier activations stretched the ranges, and a trained pi5
policy held the lane measurably worse (mean |cross-track error| 20.7 vs 19.4 mm, a 6.5 %
closed-loop drop that fails the 2 % gate); with percentiles it drove like FP32 (19.2 mm).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.durable import move

log = logging.getLogger(__name__)

#: Op types that mean "this node computes in integer arithmetic" (QOperator format, or what
#: ORT fuses QDQ groups into).
QOPERATOR_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
        "ConvInteger",
        "MatMulInteger",
    }
)
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "Gemm", "Relu")
#: Op types whose int8 weights get one scale per output channel when ``per_channel``.
DEFAULT_PER_CHANNEL_OPS: tuple[str, ...] = ("Conv",)
#: Node-name scopes (torch module paths, as ``torch.onnx`` names nodes) kept in FP32.
DEFAULT_EXCLUDE_SCOPES: tuple[str, ...] = ("/head/", "/memory/", "/encoder/proj/")


class QuantizationError(RuntimeError):
    """Quantization failed or produced a graph without quantized compute."""


class CalibrationFrameError(ValueError):
    """A calibration frame is not a uint8 HxWx3 RGB image."""


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_int8` did.  ``quantized_compute_nodes`` > 0 is guaranteed."""

    fp32_path: str
    out_path: str
    quant_format: str  # "QDQ" | "QOperator"
    per_channel: bool
    calibration_frames: int
    calibrate_method: str
    op_types_quantized: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    #: int8 weights quantized per output channel: the weight initializers' names
    per_channel_weights: tuple[str, ...] = ()
    #: op type -> count, in the quantized graph
    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_linear: int = 0
    dequantize_linear: int = 0
    #: QLinear*/QGemm/...Integer nodes (QOperator format)
    qlinear_nodes: int = 0
    #: float compute nodes (Conv/Gemm/MatMul) whose weight comes from an int8 DequantizeLinear
    qdq_compute_nodes: int = 0
    #: int8 weight initializers
    int8_initializers: int = 0
    fp32_size: int = 0
    int8_size: int = 0

    @property
    def quantized_compute_nodes(self) -> int:
        return self.qlinear_nodes + self.qdq_compute_nodes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types_quantized"] = list(self.op_types_quantized)
        d["excluded_nodes"] = list(self.excluded_nodes)
        d["per_channel_weights"] = list(self.per_channel_weights)
        d["quantized_compute_nodes"] = self.quantized_compute_nodes
        return d


def _session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _recurrent_specs(sess: Any) -> tuple[tuple[int, int], list[tuple[str, tuple[int, ...]]]]:
    """((H, W) of ``image``, [(recurrent input name, shape)]) of a contract step graph."""
    hw: tuple[int, int] | None = None
    rec: list[tuple[str, tuple[int, ...]]] = []
    outputs = {o.name for o in sess.get_outputs()}
    for i in sess.get_inputs():
        shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
        if i.name == "image":
            if len(shape) != 4 or shape[3] != 3:
                raise QuantizationError(f"input 'image' must be [1, H, W, 3], got {i.shape}")
            hw = (shape[1], shape[2])
        else:
            if i.name + "_out" not in outputs:
                raise QuantizationError(f"recurrent input {i.name!r} has no output {i.name}_out")
            rec.append((i.name, shape))
    if hw is None:
        raise QuantizationError("the model has no 'image' input (see docs/policy-contract.md)")
    return hw, rec


def _check_frame(frame: np.ndarray, hw: tuple[int, int], k: int) -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise CalibrationFrameError(
            f"calibration frame {k}: expected uint8 HxWx3 RGB, got {a.dtype} {list(a.shape)}"
        )
    if a.shape[:2] != hw:
        # The runtime resizes the same way (brain.imaging.resize_rgb, INTER_AREA).
        from brain.imaging import resize_rgb

        a = resize_rgb(a, hw)
    return np.ascontiguousarray(a)[np.newaxis]


class _CarriedStateReader:
    """Calibration feeds: each frame with the recurrent state the FP32 graph carried to it."""

    def __init__(self, fp32: Path, frames: Iterable[np.ndarray], max_frames: int | None):
        self.sess = _session(fp32)
        self.hw, self.rec = _recurrent_specs(self.sess)
        self.frames: Iterator[np.ndarray] = iter(frames)
        self.max_frames = max_frames
        self.state = {name: np.zeros(shape, np.float32) for name, shape in self.rec}
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.max_frames is not None and self.count >= self.max_frames:
            return None
        frame = next(self.frames, None)
        if frame is None:
            return None
        feeds = {"image": _check_frame(frame, self.hw, self.count), **self.state}
        outs = self.sess.run([n + "_out" for n, _ in self.rec], feeds)
        if all(np.isfinite(o).all() for o in outs):
            self.state = dict(zip((n for n, _ in self.rec), outs, strict=True))
        else:  # a poisoned state would wreck every range after it; restart like the runner
            self.state = {name: np.zeros(shape, np.float32) for name, shape in self.rec}
        self.count += 1
        return feeds

    # onnxruntime's CalibrationDataReader protocol
    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        raise QuantizationError("calibration frames can be read once only")


def first_conv_nodes(model: Any) -> list[str]:
    """Names of the Conv node(s) fed (through elementwise ops) by the ``image`` input."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        seen: set[str] = set()
        stack = [node.input[0]]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t == "image":
                out.append(node.name)
                break
            p = producers.get(t)
            if p is not None and p.op_type != "Conv":
                stack.extend(i for i in p.input if i)
    return out


def inspect_quantized(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Count what really is quantized in an ONNX graph (QDQ or QOperator)."""
    import onnx

    model = onnx.load(os.fspath(path))
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    int8_inits = {
        i.name
        for i in g.initializer
        if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    }
    dq_of_int8 = {
        o
        for n in g.node
        if n.op_type == "DequantizeLinear" and n.input[0] in int8_inits
        for o in n.output
    }
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq_compute = sum(
        1
        for n in g.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
        and len(n.input) > 1
        and n.input[0] in dq_out
        and n.input[1] in dq_of_int8
    )
    return {
        "op_counts": dict(sorted(ops.items())),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "qlinear_nodes": sum(c for op, c in ops.items() if op in QOPERATOR_OPS),
        "qdq_compute_nodes": qdq_compute,
        "int8_initializers": len(int8_inits),
    }


def _per_channel_overrides(
    model: Any, op_types: Sequence[str], nodes: set[str]
) -> dict[str, list[dict[str, int]]]:
    """ORT ``TensorQuantOverrides`` making the weights of ``nodes`` of ``op_types`` per channel.

    Per channel pays where output channels differ in scale -- convolutions with a BatchNorm
    folded in -- and costs time where it does not: ONNX Runtime's int8 GEMM for one row
    (batch 1, the recurrent core's ``Gemm``) ran ~25 % slower per channel than per tensor.
    """
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list[dict[str, int]]] = {}
    for node in model.graph.node:
        if node.op_type not in op_types or node.name not in nodes or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits:
            continue
        axis = 0
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "MatMul":
            axis = -1
        out[weight] = [{"axis": axis}]
    return out


def _ort_options(quant_format: str, calibrate_method: str) -> tuple[Any, Any]:
    """onnxruntime's QuantFormat and CalibrationMethod for their names; ValueError otherwise."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat

    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}.get(quant_format.lower())
    if fmt is None:
        raise ValueError(f"quant_format must be 'QDQ' or 'QOperator', got {quant_format!r}")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibrate_method.lower() not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}")
    return fmt, methods[calibrate_method.lower()]


def _choose_nodes(
    src: Any,
    op_types: Sequence[str],
    exclude_nodes: Sequence[str],
    exclude_scopes: Sequence[str],
    exclude_first_conv: bool,
) -> tuple[list[str], list[str]]:
    """(nodes kept in float, nodes to quantize); QuantizationError if none is left to quantize."""
    excluded = list(exclude_nodes)
    excluded += [
        n.name
        for n in src.graph.node
        if n.op_type in op_types
        and any(n.name.startswith(scope) for scope in exclude_scopes)
        and n.name not in excluded
    ]
    if exclude_first_conv:
        excluded += [n for n in first_conv_nodes(src) if n not in excluded]

    candidates = [
        n.name for n in src.graph.node if n.op_type in op_types and n.name not in excluded
    ]
    if not candidates:
        raise QuantizationError(
            f"no quantized compute nodes possible: no {list(op_types)} node is left "
            f"to quantize (excluded: {excluded})"
        )
    return excluded, candidates


def _pre_process(fp32_onnx: Path, pre: Path) -> Path:
    """The graph to quantize: ``pre`` after ORT's recommended pre-processing, if that works."""
    model_in = fp32_onnx
    try:  # shape inference + fusions the quantizer recommends; optional
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        model_in = pre
    except Exception as exc:  # pragma: no cover - depends on the ORT version
        log.warning("quant_pre_process failed (%s); quantizing the graph as exported", exc)
    return model_in


def _quantize_static(
    model_in: Path,
    tmp_out: Path,
    reader: _CarriedStateReader,
    *,
    quant_format: Any,
    op_types: Sequence[str],
    excluded: list[str],
    calibrate_method: Any,
    overrides: dict[str, list[dict[str, int]]],
) -> None:
    from onnxruntime.quantization import QuantType, quantize_static

    try:
        # The histogram calibrators print progress on stdout, which is a CLI's result.
        sink = contextlib.redirect_stdout(io.StringIO())
        with sink:
            quantize_static(
                str(model_in),
                str(tmp_out),
                reader,
                quant_format=quant_format,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=excluded,
                per_channel=False,  # per channel only where ``overrides`` says so
                calibrate_method=calibrate_method,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={
                    "CalibTensorRangeSymmetric": False,
                    "TensorQuantOverrides": overrides,
                },
            )
    except CalibrationFrameError:
        raise
    except Exception as exc:
        raise QuantizationError(f"onnxruntime quantize_static failed: {exc}") from exc


def _carry_metadata(src: Any, tmp_out: Path, quant_format: str) -> None:
    """Carry the contract metadata (version, action_names, model_config, ...) into the result."""
    import onnx

    q = onnx.load(str(tmp_out))
    have = {p.key for p in q.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            e = q.metadata_props.add()
            e.key, e.value = p.key, p.value
    e = q.metadata_props.add()
    e.key, e.value = "quantization", f"int8-static-{quant_format.lower()}"
    onnx.save(q, str(tmp_out))


def quantize_int8(
    fp32_onnx: Path,
    out_path: Path,
    calibration_frames: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    per_channel_ops: Sequence[str] = DEFAULT_PER_CHANNEL_OPS,
    quant_format: str = "QDQ",
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    exclude_first_conv: bool = True,
    exclude_scopes: Sequence[str] = DEFAULT_EXCLUDE_SCOPES,
    exclude_nodes: Sequence[str] = (),
    max_frames: int | None = 512,
    min_frames: int = 1,
    calibrate_method: str = "percentile",
) -> QuantReport:
    """Static INT8 quantization of a contract step graph, calibrated on camera frames.

    ``calibration_frames``: uint8 HxWx3 RGB frames (resized to the model's input size with
    INTER_AREA when they differ), in driving order -- the recurrent state is carried
    through them by the FP32 graph.  At most ``max_frames`` are used.  Nodes of ``op_types``
    are quantized except those in ``exclude_nodes``, under ``exclude_scopes`` and (with
    ``exclude_first_conv``) the convolution reading the image; with ``per_channel`` the
    weights of ``per_channel_ops`` nodes get one scale per output channel, the rest one per
    tensor.  Writes ``out_path``
    (metadata such as ``version`` and ``action_names`` copied from the FP32 graph) and
    returns what is in it; raises :class:`QuantizationError` when the result has no
    quantized compute node or does not load, ``ValueError`` for a bad frame.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    if not fp32_onnx.is_file():
        raise FileNotFoundError(f"{fp32_onnx}: no such FP32 model")
    fmt, method = _ort_options(quant_format, calibrate_method)
    src = onnx.load(str(fp32_onnx))
    excluded, candidates = _choose_nodes(
        src, op_types, exclude_nodes, exclude_scopes, exclude_first_conv
    )
    frames_it = iter(calibration_frames)
    first = next(frames_it, None)
    if first is None:
        raise QuantizationError("no calibration frames were given (need >= 1)")
    reader = _CarriedStateReader(fp32_onnx, itertools.chain([first], frames_it), max_frames)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quant-", dir=out_path.parent) as tmp:
        tmp_out = Path(tmp) / "model.onnx"
        model_in = _pre_process(fp32_onnx, Path(tmp) / "pre.onnx")
        overrides = (
            _per_channel_overrides(onnx.load(str(model_in)), per_channel_ops, set(candidates))
            if per_channel
            else {}
        )
        _quantize_static(
            model_in,
            tmp_out,
            reader,
            quant_format=fmt,
            op_types=op_types,
            excluded=excluded,
            calibrate_method=method,
            overrides=overrides,
        )
        if reader.count < min_frames:
            raise QuantizationError(
                f"only {reader.count} calibration frames were given (need >= {min_frames})"
            )
        _carry_metadata(src, tmp_out, quant_format)
        info = inspect_quantized(tmp_out)
        if info["qlinear_nodes"] + info["qdq_compute_nodes"] == 0:
            raise QuantizationError(
                f"no quantized compute nodes in the result (ops: {info['op_counts']}); "
                f"op_types={list(op_types)} excluded={excluded}"
            )
        try:
            _session(tmp_out)
        except Exception as exc:
            raise QuantizationError(f"the quantized model does not load: {exc}") from exc
        move(tmp_out, out_path)
    return QuantReport(
        fp32_path=str(fp32_onnx),
        out_path=str(out_path),
        quant_format="QDQ" if fmt == QuantFormat.QDQ else "QOperator",
        per_channel=bool(overrides),
        calibration_frames=reader.count,
        calibrate_method=calibrate_method.lower(),
        op_types_quantized=tuple(op_types),
        excluded_nodes=tuple(excluded),
        per_channel_weights=tuple(overrides),
        fp32_size=fp32_onnx.stat().st_size,
        int8_size=out_path.stat().st_size,
        **info,
    )

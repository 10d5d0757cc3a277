"""Bundles hold self-contained ONNX models: no tensor may keep its data in another file.

Why our own check: an ONNX tensor can say "my bytes are in file X at offset Y"
(``data_location = EXTERNAL``).  onnxruntime resolves X relative to the model's
directory, and only recent versions (>= 1.24) refuse paths that leave it; the
pin allows 1.17.  A bundle is verified file by file, so weights read from
anywhere else are weights nobody verified.  This walks every tensor the format
can hold (initializers, sparse initializers, tensors in node attributes, in
subgraphs of If/Loop/Scan, in functions and in training info) and refuses any
that points outside the model, whatever the runtime would do.

Parsing uses the ``onnx`` package (the format's own protobuf definitions), with
external data loading off: nothing the model names is ever opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brain.bundle.manifest import BundleError


def _tensors_of_graph(graph: Any, where: str) -> Iterator[tuple[Any, str]]:
    for t in graph.initializer:
        yield t, f"{where}initializer {t.name!r}"
    for sp in graph.sparse_initializer:
        yield sp.values, f"{where}sparse initializer {sp.values.name!r}"
        yield sp.indices, f"{where}sparse initializer {sp.values.name!r} (indices)"
    for node in graph.node:
        yield from _tensors_of_node(node, where)


def _tensors_of_node(node: Any, where: str) -> Iterator[tuple[Any, str]]:
    for attr in node.attribute:
        at = f"{where}node {node.name or node.op_type!r} attribute {attr.name!r}"
        if attr.HasField("t"):
            yield attr.t, at
        for t in attr.tensors:
            yield t, at
        for sp in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
            yield sp.values, at
            yield sp.indices, at
        for sp in attr.sparse_tensors:
            yield sp.values, at
            yield sp.indices, at
        if attr.HasField("g"):
            yield from _tensors_of_graph(attr.g, f"{at} > ")
        for g in attr.graphs:
            yield from _tensors_of_graph(g, f"{at} > ")


def all_tensors(model: Any) -> Iterator[tuple[Any, str]]:
    """Every TensorProto in ``model`` with a description of where it sits."""
    yield from _tensors_of_graph(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _tensors_of_node(node, f"function {fn.name!r} ")
    for i, info in enumerate(model.training_info):
        yield from _tensors_of_graph(info.initialization, f"training_info[{i}] initialization ")
        yield from _tensors_of_graph(info.algorithm, f"training_info[{i}] algorithm ")


def check_onnx_bytes(data: bytes, origin: str) -> None:
    """Raise BundleError if the ONNX model in ``data`` is unparsable or not self-contained."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BundleError(f"{origin}: not a loadable ONNX model ({exc})") from None
    for tensor, where in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            named = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise BundleError(
                f"{origin}: {where} keeps its data in an external file ({named!r}); "
                "bundles hold self-contained models only"
            )


def check_onnx_file(path: Path) -> None:
    """:func:`check_onnx_bytes` of a model file."""
    check_onnx_bytes(Path(path).read_bytes(), str(path))

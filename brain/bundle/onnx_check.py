"""Bundles hold self-contained ONNX models: no tensor may keep its data in another file.

Why our own check: an ONNX tensor can say "my bytes are in file X at offset Y"
(``data_location = EXTERNAL``).  onnxruntime resolves X relative to the model's
directory, and only recent versions (>= 1.24) refuse paths that leave it; the
pin allows 1.17.  A bundle is verified file by file, so weights read from
anywhere else are weights nobody verified.  This walks every tensor the format
can hold (initializers, sparse initializers, tensors in node attributes, in
subgraphs of If/Loop/Scan, in functions and in training info) and refuses any
that keeps its data outside the model file, whatever the runtime would do.

Parsing uses protobuf (which onnxruntime already depends on) with the subset of
onnx.proto that holds tensors, the field numbers the format fixes; every other
field is skipped as unknown.  Not the ``onnx`` package: importing it costs ~0.7 s
and ~16 MB in the daemon (ml_dtypes), for one walk per model.  The test suite
checks this subset against onnx's own descriptors.  Nothing the model names is
ever opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from brain.bundle.manifest import BundleError

#: onnx.proto field numbers (proto2): message -> [(field, number, type, repeated)].
#: A type in _SCHEMA is a message; "string"/"int32" are scalars (DataLocation is an enum,
#: a varint on the wire like int32).  EXTERNAL is DataLocation's value 1.
_SCHEMA: dict[str, list[tuple[str, int, str, bool]]] = {
    "StringStringEntryProto": [("key", 1, "string", False), ("value", 2, "string", False)],
    "TensorProto": [
        ("name", 8, "string", False),
        ("external_data", 13, "StringStringEntryProto", True),
        ("data_location", 14, "int32", False),
    ],
    "SparseTensorProto": [
        ("values", 1, "TensorProto", False),
        ("indices", 2, "TensorProto", False),
    ],
    "AttributeProto": [
        ("name", 1, "string", False),
        ("t", 5, "TensorProto", False),
        ("g", 6, "GraphProto", False),
        ("tensors", 10, "TensorProto", True),
        ("graphs", 11, "GraphProto", True),
        ("sparse_tensor", 22, "SparseTensorProto", False),
        ("sparse_tensors", 23, "SparseTensorProto", True),
    ],
    "NodeProto": [
        ("name", 3, "string", False),
        ("op_type", 4, "string", False),
        ("attribute", 5, "AttributeProto", True),
    ],
    "GraphProto": [
        ("node", 1, "NodeProto", True),
        ("initializer", 5, "TensorProto", True),
        ("sparse_initializer", 15, "SparseTensorProto", True),
    ],
    "FunctionProto": [
        ("name", 1, "string", False),
        ("node", 7, "NodeProto", True),
        ("attribute_proto", 11, "AttributeProto", True),
    ],
    "TrainingInfoProto": [
        ("initialization", 1, "GraphProto", False),
        ("algorithm", 2, "GraphProto", False),
    ],
    "ModelProto": [
        ("graph", 7, "GraphProto", False),
        ("training_info", 20, "TrainingInfoProto", True),
        ("functions", 25, "FunctionProto", True),
    ],
}
EXTERNAL = 1
_PACKAGE = "continuon_onnx_subset"


@cache
def _model_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(
        name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2"
    )
    F = descriptor_pb2.FieldDescriptorProto
    scalar = {"string": F.TYPE_STRING, "int32": F.TYPE_INT32}
    for msg, fields in _SCHEMA.items():
        m = fd.message_type.add(name=msg)
        for name, number, typ, repeated in fields:
            f = m.field.add(name=name, number=number)
            f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if typ in scalar:
                f.type = scalar[typ]
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, f".{_PACKAGE}.{typ}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


def _tensors_of_graph(graph: Any, where: str) -> Iterator[tuple[Any, str]]:
    for t in graph.initializer:
        yield t, f"{where}initializer {t.name!r}"
    for sp in graph.sparse_initializer:
        yield sp.values, f"{where}sparse initializer {sp.values.name!r}"
        yield sp.indices, f"{where}sparse initializer {sp.values.name!r} (indices)"
    for node in graph.node:
        yield from _tensors_of_node(node, where)


def _tensors_of_node(node: Any, where: str) -> Iterator[tuple[Any, str]]:
    yield from _tensors_of_attributes(node.attribute, f"{where}node {node.name or node.op_type!r} ")


def _tensors_of_attributes(attributes: Any, where: str) -> Iterator[tuple[Any, str]]:
    for attr in attributes:
        at = f"{where}attribute {attr.name!r}"
        if attr.HasField("t"):
            yield attr.t, at
        for t in attr.tensors:
            yield t, at
        sparse = [
            *attr.sparse_tensors,
            *([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []),
        ]
        for sp in sparse:
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
        # default values of the function's attributes
        yield from _tensors_of_attributes(fn.attribute_proto, f"function {fn.name!r} ")
    for i, info in enumerate(model.training_info):
        yield from _tensors_of_graph(info.initialization, f"training_info[{i}] initialization ")
        yield from _tensors_of_graph(info.algorithm, f"training_info[{i}] algorithm ")


def check_onnx_bytes(data: bytes, origin: str) -> None:
    """Raise BundleError if the ONNX model in ``data`` is unparsable or not self-contained."""
    from google.protobuf.message import DecodeError

    try:
        model = _model_class().FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BundleError(f"{origin}: not a loadable ONNX model ({exc})") from None
    for tensor, where in all_tensors(model):
        if tensor.data_location == EXTERNAL or len(tensor.external_data):
            named = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise BundleError(
                f"{origin}: {where} keeps its data in an external file ({named!r}); "
                "bundles hold self-contained models only"
            )


def check_onnx_file(path: Path) -> None:
    """:func:`check_onnx_bytes` of a model file."""
    check_onnx_bytes(Path(path).read_bytes(), str(path))

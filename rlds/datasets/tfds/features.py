"""``features.json``: the FeaturesDict as tfds' ``Feature.to_json`` writes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlds import images
from rlds.datasets.tfds.schema import METADATA_JSON_KEY, Obs, Schema

_FEATURES = "tensorflow_datasets.core.features."
_CLS_DICT = _FEATURES + "features_dict.FeaturesDict"
_CLS_DATASET = _FEATURES + "dataset_feature.Dataset"
_CLS_TENSOR = _FEATURES + "tensor_feature.Tensor"
_CLS_SCALAR = _FEATURES + "scalar.Scalar"
_CLS_IMAGE = _FEATURES + "image_feature.Image"
_CLS_TEXT = _FEATURES + "text_feature.Text"


def _tensor_json(
    cls: str, shape: Sequence[int | None], dtype: str, encoding: str
) -> dict[str, Any]:
    dims = [str(-1 if d is None else d) for d in shape]
    return {
        "pythonClassName": cls,
        "tensor": {
            "shape": {"dimensions": dims} if dims else {},
            "dtype": dtype,
            "encoding": encoding,
        },
    }


def _scalar_json(dtype: str) -> dict[str, Any]:
    # float64 goes as bytes: a FloatList would round it to float32.
    if dtype == "float64":
        return _tensor_json(_CLS_TENSOR, [], "float64", "bytes")
    return _tensor_json(_CLS_SCALAR, [], dtype, "none")


def _dict_json(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"pythonClassName": _CLS_DICT, "featuresDict": {"features": features}}


def _obs_json(o: Obs) -> dict[str, Any]:
    if o.kind in (images.JPEG, images.PNG16):
        dims = [str(-1 if d is None else d) for d in o.shape]
        return {
            "pythonClassName": _CLS_IMAGE,
            "image": {
                "shape": {"dimensions": dims},
                "dtype": o.dtype,
                "encodingFormat": "jpeg" if o.kind == images.JPEG else "png",
            },
        }
    if o.kind == "bool":
        return _tensor_json(_CLS_TENSOR, o.shape, "bool", "none")
    return _tensor_json(_CLS_TENSOR, o.shape, o.dtype, "bytes")


def features_json(schema: Schema) -> dict[str, Any]:
    step: dict[str, dict[str, Any]] = {
        "observation": _dict_json({n: _obs_json(o) for n, o in sorted(schema.obs.items())}),
        "action": _tensor_json(_CLS_TENSOR, [schema.action_dim], "float64", "bytes"),
        "reward": _scalar_json("float64"),
        "discount": _scalar_json("float64"),
        "is_first": _scalar_json("bool"),
        "is_last": _scalar_json("bool"),
        "is_terminal": _scalar_json("bool"),
        "t": _scalar_json("float64"),
    }
    if schema.timestamps:
        step["timestamps"] = _dict_json({k: _scalar_json("float64") for k in schema.timestamps})
    if schema.include_extra:
        step["extra_json"] = {"pythonClassName": _CLS_TEXT, "text": {}}
    meta: dict[str, dict[str, Any]] = {}
    for k, t in schema.meta_types.items():
        meta[k] = {"pythonClassName": _CLS_TEXT, "text": {}} if t == "text" else _scalar_json(t)
    meta[METADATA_JSON_KEY] = {"pythonClassName": _CLS_TEXT, "text": {}}
    return _dict_json(
        {
            "steps": {
                "pythonClassName": _CLS_DATASET,
                "sequence": {"feature": _dict_json(step), "length": "-1"},
            },
            "episode_metadata": _dict_json(meta),
        }
    )

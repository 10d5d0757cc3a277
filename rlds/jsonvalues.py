"""Exact JSON for floats, including NaN and infinities.

Python's ``json`` writes floats with ``repr``, which round-trips every finite
float64 bit-exactly (``-0.0`` included).  JSON has no NaN or Infinity, and
``json`` would otherwise emit non-standard tokens that other readers reject, so a
non-finite float is written as ``{"$f64": "<16 hex digits>"}``: its IEEE-754 bit
pattern, big-endian.  That keeps even NaN payloads and signs bit-exact.

Numpy scalars and arrays in ``extra`` (e.g. a shadow policy's action) are turned
into plain JSON values on the way in.  A dict whose only key is ``"$f64"`` is
reserved for this encoding.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

_TAG = "$f64"
_D = struct.Struct(">d")


def encode_float(x: float) -> float | dict[str, str]:
    x = float(x)
    if math.isfinite(x):
        return x
    return {_TAG: _D.pack(x).hex()}


def decode_float(v: Any) -> float:
    if isinstance(v, dict):
        value: float = _D.unpack(bytes.fromhex(v[_TAG]))[0]
        return value
    return float(v)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types, non-finite floats tagged; raises TypeError for what JSON cannot hold."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, float):  # np.float64 is a float subclass
        return encode_float(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, got {k!r}")
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r}")


def _hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and _TAG in d and isinstance(d[_TAG], str):
        return _D.unpack(bytes.fromhex(d[_TAG]))[0]
    return d


def dumps(obj: Any) -> str:
    """Compact strict JSON of ``obj`` (after ``to_jsonable``)."""
    return json.dumps(to_jsonable(obj), separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Inverse of ``dumps``: tagged floats come back as floats."""
    return json.loads(text, object_hook=_hook)

"""``edge_manifest.json``: the schema that says what a bundle holds and how it may be used.

The manifest is the only thing the robot trusts about a model beyond its bytes: the TUF
target (or, for local bundles, the device signature) covers the archive, the archive covers
the manifest, and the manifest's hashes cover every model file.  So the schema is strict:
unknown fields, wrong types and inconsistent specs are refused instead of guessed at.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_NAME = "edge_manifest.json"
SIGNATURE_NAME = "edge_manifest.sig"
#: The manifest is small; anything bigger is an attack or a mistake.
MAX_MANIFEST_BYTES = 1 << 20
SCHEMA_VERSION = 1

Backend = Literal["onnx_int8", "onnx_fp32", "litert_fp32"]
BACKENDS: tuple[str, ...] = ("onnx_int8", "onnx_fp32", "litert_fp32")
#: Model file suffixes a bundle may carry; an allowlist, so a pickle (.pt, .pkl, .ckpt, .npy)
#: or a script can never ride along.  No ``.data``: models are self-contained (no ONNX
#: external weights, see brain.bundle.onnx_check).
ARTIFACT_SUFFIXES = (".onnx", ".tflite")
_BACKEND_SUFFIX = {"onnx_int8": ".onnx", "onnx_fp32": ".onnx", "litert_fp32": ".tflite"}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IDENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class BundleError(Exception):
    """A bundle (archive, directory or manifest) cannot be used; the message says why."""


Sha256 = Annotated[str, Field(pattern=_HEX64.pattern)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """The policy's camera input (docs/policy-contract.md: uint8 NHWC RGB)."""

    height: Annotated[int, Field(gt=0, le=4096)]
    width: Annotated[int, Field(gt=0, le=4096)]
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"


class DepthSpec(_Strict):
    height: Annotated[int, Field(gt=0, le=4096)]
    width: Annotated[int, Field(gt=0, le=4096)]
    dtype: Literal["uint16", "float32"] = "uint16"
    units: Literal["mm", "m"] = "mm"


class ObservationSpec(_Strict):
    image: ImageSpec
    depth: DepthSpec | None = None


class ActionSpec(_Strict):
    """Action names and ranges: a bundle for another robot must never drive this one."""

    names: Annotated[list[str], Field(min_length=1, max_length=64)]
    low: list[float]
    high: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> ActionSpec:
        n = len(self.names)
        if len(set(self.names)) != n or any(not _IDENT.match(x) for x in self.names):
            raise ValueError(f"names must be unique lowercase identifiers, got {self.names}")
        if len(self.low) != n or len(self.high) != n:
            raise ValueError(f"low/high need {n} entries (one per name)")
        for name, lo, hi in zip(self.names, self.low, self.high, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {name!r} [{lo}, {hi}] must be finite and increasing")
        return self


class ArtifactEntry(_Strict):
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]
    backend: Backend


class SafetySpec(_Strict):
    """The health window's budget for this model (what counts as a failed trial)."""

    max_abs_action: list[float]
    max_latency_ms: Annotated[float, Field(gt=0, le=10_000)]
    health_window_s: Annotated[float, Field(gt=0, le=3600)]
    max_nan_outputs: Annotated[int, Field(ge=0)] = 0
    max_inference_errors: Annotated[int, Field(ge=0)] = 0
    max_safety_interventions: Annotated[int, Field(ge=0)] = 0

    @field_validator("max_abs_action")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (math.isfinite(x) and x > 0) for x in v):
            raise ValueError(f"entries must be finite and > 0, got {v}")
        return v


class Provenance(_Strict):
    """Where the model came from.  A local bundle names the cloud-signed base it derives from."""

    created_utc: str
    software_version: Annotated[str, Field(min_length=1, max_length=64)]
    source: Literal["cloud", "local"]
    checkpoint_sha256: Sha256 | None = None
    base_version: str | None = None
    base_manifest_sha256: Sha256 | None = None
    train_config_hash: Annotated[str, Field(max_length=128)] | None = None

    @field_validator("created_utc")
    @classmethod
    def _iso(cls, v: str) -> str:
        try:
            when = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {v!r}") from None
        offset = when.utcoffset()
        if when.tzinfo is None or offset is None or offset.total_seconds():
            raise ValueError(f"must be UTC with an explicit offset or Z, got {v!r}")
        return v

    @model_validator(mode="after")
    def _base(self) -> Provenance:
        if self.source == "cloud":
            if self.base_version is not None or self.base_manifest_sha256 is not None:
                raise ValueError("a cloud bundle has no base_version/base_manifest_sha256")
        elif self.base_version is None or self.base_manifest_sha256 is None:
            raise ValueError("a local bundle must name base_version and base_manifest_sha256")
        return self


class ReleaseGate(_Strict):
    """The closed-loop bar a model must clear before ``cloud_jobs publish`` ships it."""

    #: Laps each evaluation run must have asked for (a 40-step "evaluation" proves nothing).
    min_laps: Annotated[int, Field(ge=1, le=100)] = 1
    #: Share of the runs (tracks, or suite conditions) that must complete their laps.
    min_completed_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    max_off_track_events: Annotated[int, Field(ge=0, le=10_000)] = 0
    #: Policy mean |cross-track error| over the expert's, under the same conditions.
    max_cte_ratio: Annotated[float, Field(gt=0.0, le=1000.0)] = 3.0


class ReleaseRecord(_Strict):
    """How the release gate judged the model: stamped into the manifest when it is published.

    ``forced``: published although the gate did not pass (``--force``, for experiments).
    """

    passed: bool
    forced: bool
    reasons: Annotated[list[Annotated[str, Field(max_length=400)]], Field(max_length=16)]
    gate: ReleaseGate
    evaluation_sha256: Sha256 | None = None
    runs: Annotated[int, Field(ge=0)] = 0
    completed: Annotated[int, Field(ge=0)] = 0
    laps_per_run: Annotated[int, Field(ge=0)] = 0
    off_track_events: Annotated[int, Field(ge=0)] = 0
    cte_ratio: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ReleaseRecord:
        if self.passed and (self.forced or self.reasons):
            raise ValueError("a passed gate has no reasons against it and needs no force")
        if not self.passed and not self.reasons:
            raise ValueError("a failed gate must say why")
        return self


class EdgeManifest(_Strict):
    """The schema of ``edge_manifest.json`` (docs/publishing.md)."""

    schema_version: Literal[1]
    version: Annotated[str, Field(pattern=_VERSION.pattern)]
    release_counter: Annotated[int, Field(ge=0, le=2**53)]
    hardware_id: Annotated[str, Field(pattern=_IDENT.pattern)]
    observation: ObservationSpec
    action: ActionSpec
    preferred_backends: Annotated[list[Backend], Field(min_length=1)]
    artifacts: Annotated[dict[str, ArtifactEntry], Field(min_length=1, max_length=16)]
    safety: SafetySpec
    provenance: Provenance
    #: The release gate's verdict, stamped by ``cloud_jobs publish`` (absent: never published
    #: through the gate, e.g. a local fine-tune's bundle).
    release: ReleaseRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EdgeManifest:
        for name, art in self.artifacts.items():
            if not _FILENAME.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
                raise ValueError(f"artifact name {name!r} is not a plain file name")
            if not name.endswith(ARTIFACT_SUFFIXES):
                raise ValueError(f"artifact {name!r}: only {ARTIFACT_SUFFIXES} files are allowed")
            if not name.endswith(_BACKEND_SUFFIX[art.backend]):
                raise ValueError(f"artifact {name!r} does not fit backend {art.backend}")
        if len(set(self.preferred_backends)) != len(self.preferred_backends):
            raise ValueError(f"preferred_backends has duplicates: {self.preferred_backends}")
        have = {a.backend for a in self.artifacts.values()}
        missing = [b for b in self.preferred_backends if b not in have]
        if missing:
            raise ValueError(f"preferred_backends {missing} have no artifact")
        if len(self.safety.max_abs_action) != len(self.action.names):
            raise ValueError("safety.max_abs_action needs one entry per action name")
        return self

    def model_file(self, backend: str) -> str | None:
        """The model file for ``backend``, or None."""
        for name, art in sorted(self.artifacts.items()):
            if art.backend == backend:
                return name
        return None

    def total_size(self) -> int:
        return sum(a.size for a in self.artifacts.values())

    def to_json_bytes(self) -> bytes:
        """Canonical bytes (sorted keys, fixed separators): what is hashed and signed."""
        # Without a release record the bytes are what they were before the field existed.
        data = self.model_dump(mode="json", exclude={"release"} if self.release is None else None)
        return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_manifest(data: bytes, origin: str = MANIFEST_NAME) -> EdgeManifest:
    """Parse and validate manifest bytes; ``origin`` names the source in errors."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{origin}: {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{origin}: malformed JSON ({exc})") from None
    except ValueError as exc:
        raise BundleError(f"{origin}: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{origin}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{origin}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this software reads {SCHEMA_VERSION})"
        )
    try:
        return EdgeManifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{origin}: {_describe(exc)}") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def read_manifest(path: str | os.PathLike[str]) -> EdgeManifest:
    """Read ``edge_manifest.json`` (or a bundle directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{p}: cannot read manifest ({exc.strerror or exc})") from None
    return parse_manifest(data, str(p))


def manifest_sha256(path_or_bytes: str | os.PathLike[str] | bytes) -> str:
    """SHA-256 of the manifest file's bytes (what a local bundle's provenance names)."""
    if isinstance(path_or_bytes, bytes):
        return hashlib.sha256(path_or_bytes).hexdigest()
    p = Path(path_or_bytes)
    if p.is_dir():
        p = p / MANIFEST_NAME
    return hashlib.sha256(p.read_bytes()).hexdigest()

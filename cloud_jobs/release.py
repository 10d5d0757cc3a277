"""The release gate: no model is published until it has driven well enough in closed loop.

A policy that leaves the track on a held-out layout must never reach a robot just because
every stage after training ran.  ``cloud_jobs publish --evaluation EVAL.json`` judges the
closed-loop evaluation (``cloud_jobs evaluate``, one track or a whole ``--suite``) against a
:class:`ReleaseGate`: every run completed its laps, no off-track event, mean |cross-track
error| within a ratio of the expert's on the same conditions, and the evaluation is of the
checkpoint the bundle was exported from.  A failing model is refused with the reasons; with
``--force`` (experiments) it is published anyway and the verdict, ``forced`` included, is
stamped into the published bundle's manifest (``release``), where every robot and every
later reader can see it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from brain.bundle.manifest import BundleError, EdgeManifest, ReleaseGate, ReleaseRecord


class ReleaseRefused(RuntimeError):
    """The release gate did not pass and publishing was not forced; the message says why."""


def add_gate_args(p: argparse.ArgumentParser) -> None:
    """The gate's thresholds as options (the pipeline and ``cloud_jobs publish`` share them)."""
    d = ReleaseGate()
    p.add_argument(
        "--gate-min-laps",
        type=int,
        default=d.min_laps,
        help=f"laps each evaluation run must ask for (default {d.min_laps})",
    )
    p.add_argument(
        "--gate-min-completed",
        type=float,
        default=d.min_completed_fraction,
        help="share of the runs that must complete their laps (default 1: all)",
    )
    p.add_argument(
        "--gate-max-off-track",
        type=int,
        default=d.max_off_track_events,
        help=f"off-track events allowed over all runs (default {d.max_off_track_events})",
    )
    p.add_argument(
        "--gate-max-cte-ratio",
        type=float,
        default=d.max_cte_ratio,
        help=f"policy / expert mean |cross-track error| (default {d.max_cte_ratio:g})",
    )


def gate_from_args(args: argparse.Namespace) -> ReleaseGate:
    """Raises ValueError (pydantic's, naming the field) on an out-of-range threshold."""
    return ReleaseGate(
        min_laps=args.gate_min_laps,
        min_completed_fraction=args.gate_min_completed,
        max_off_track_events=args.gate_max_off_track,
        max_cte_ratio=args.gate_max_cte_ratio,
    )


def gate_argv(gate: ReleaseGate) -> list[str]:
    """The options that reproduce ``gate`` on a command line (for the pipeline's subprocess)."""
    return [
        *("--gate-min-laps", str(gate.min_laps)),
        *("--gate-min-completed", repr(gate.min_completed_fraction)),
        *("--gate-max-off-track", str(gate.max_off_track_events)),
        *("--gate-max-cte-ratio", repr(gate.max_cte_ratio)),
    ]


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and math.isfinite(v) else 0


def judge(
    evaluation: dict[str, Any] | None,
    gate: ReleaseGate,
    *,
    checkpoint_sha256: str | None = None,
    evaluation_sha256: str | None = None,
    forced: bool = False,
) -> ReleaseRecord:
    """The gate's verdict on an ``eval.json`` (None: no evaluation at all, which fails).

    ``checkpoint_sha256``: the model being released; an evaluation of another checkpoint
    (or one that does not name its checkpoint) does not count for it.
    """
    base: dict[str, Any] = {"gate": gate, "evaluation_sha256": evaluation_sha256}
    if evaluation is None:
        return _record(base, ["no closed-loop evaluation (cloud_jobs evaluate)"], forced)
    summary = evaluation.get("summary") or {}
    pol, exp = summary.get("policy") or {}, summary.get("expert") or {}
    reasons: list[str] = []
    if not pol:
        reasons.append("the evaluation has no policy results")
    runs, completed = _int(pol.get("tracks")), _int(pol.get("completed"))
    off = _int(pol.get("off_track_events"))
    laps = _int((evaluation.get("conditions") or {}).get("laps"))
    base.update(runs=runs, completed=completed, off_track_events=off, laps_per_run=laps)
    evaluated = evaluation.get("checkpoint_sha256")
    if checkpoint_sha256 is not None and evaluated != checkpoint_sha256:
        reasons.append(
            f"the evaluation is of checkpoint {str(evaluated)[:12]}, "
            f"not of the released model's {checkpoint_sha256[:12]}"
        )
    if laps < gate.min_laps:
        reasons.append(f"the evaluation asked for {laps} lap(s) per run, the gate {gate.min_laps}")
    if pol and completed < gate.min_completed_fraction * runs - 1e-9:
        reasons.append(
            f"completed the laps on {completed} of {runs} run(s) "
            f"(gate: {gate.min_completed_fraction:.0%})"
        )
    if pol and off > gate.max_off_track_events:
        reasons.append(f"{off} off-track event(s) (gate: {gate.max_off_track_events})")
    ratio = cte_ratio(pol, exp)
    base["cte_ratio"] = ratio
    if pol and ratio is None:
        reasons.append("no expert baseline to compare the cross-track error with")
    elif ratio is not None and ratio > gate.max_cte_ratio:
        reasons.append(
            f"mean |cross-track error| {ratio:.2f}x the expert's (gate: {gate.max_cte_ratio:g}x)"
        )
    return _record(base, reasons, forced)


def cte_ratio(pol: dict[str, Any], exp: dict[str, Any]) -> float | None:
    """Policy / expert mean |cte|; None without both (an expert on the centreline: 1e-6 m)."""
    p, e = pol.get("mean_abs_cte_m"), exp.get("mean_abs_cte_m")
    if not isinstance(p, int | float) or not isinstance(e, int | float):
        return None
    if not (math.isfinite(p) and math.isfinite(e)):
        return None
    return float(p) / max(float(e), 1e-6)


def _record(base: dict[str, Any], reasons: list[str], forced: bool) -> ReleaseRecord:
    passed = not reasons
    return ReleaseRecord(passed=passed, forced=forced and not passed, reasons=reasons, **base)


def load_evaluation(path: Path) -> tuple[dict[str, Any], str]:
    """``eval.json`` and its sha256; ValueError naming the file when it is not one."""
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable evaluation ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != "closed_loop_eval":
        raise ValueError(f"{path}: not a closed-loop evaluation (cloud_jobs evaluate's eval.json)")
    return data, hashlib.sha256(raw).hexdigest()


def stamp_bundle(bundle: Path, record: ReleaseRecord, out: Path) -> EdgeManifest:
    """Write ``bundle`` again as ``out`` with ``record`` in its manifest (artifacts unchanged).

    The archive is verified and unpacked first, exactly as a robot would, so what is
    re-packed is what the manifest's hashes cover.  A signed (local) bundle is refused:
    its signature covers the manifest bytes, and only the robot holds that key.
    """
    from brain.bundle.manifest import SIGNATURE_NAME
    from brain.bundle.pack import write_archive
    from brain.bundle.unpack import unpack_bundle

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".stamp-") as tmp:
        staged = Path(tmp) / "bundle"
        manifest = unpack_bundle(bundle, staged)
        if manifest.provenance.source != "cloud" or (staged / SIGNATURE_NAME).exists():
            raise BundleError(f"{bundle}: only cloud bundles are published")
        stamped = EdgeManifest.model_validate({**manifest.model_dump(), "release": record})
        write_archive(stamped, staged, out)
    return stamped

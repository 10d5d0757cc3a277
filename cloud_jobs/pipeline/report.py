"""The run's report: one markdown file with the figures and plots, and report.json for machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_jobs.memorization import condition_key
from cloud_jobs.pipeline.stages import fmt_s
from common.durable import replace_file

if TYPE_CHECKING:
    from cloud_jobs.pipeline.run import Pipeline


def _plot_training(metrics: Path, out: Path) -> bool:
    from cloud_jobs.evaluate import plot_training

    return bool(metrics.is_file() and plot_training(metrics, out))


def _plot_latency(samples_ms: list[float], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.hist(samples_ms, bins=40, color="#3b7dd8")
    ax.set_xlabel("policy step latency (ms)")
    ax.set_ylabel("steps")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def _fmt(v: Any, nd: int = 3) -> Any:
    return round(v, nd) if isinstance(v, float) else v


def _export_section(ex: dict[str, Any], bench: dict[str, Any]) -> list[str]:
    if not ex:
        return []
    lines = ["## Export, parity gate and latency", ""]
    cols = ["backend", "bytes", "parity gate", "value", "passed", "closed-loop mean abs cte (m)"]
    lines += [_row(cols), _row(["---"] * len(cols))]
    cl = (ex.get("closed_loop") or {}).get("backends") or {}
    for backend, size in (ex.get("artifact_bytes") or {}).items():
        par = (ex.get("parity") or {}).get(backend) or {}
        gate = par.get("gate", "")
        if gate.startswith("fp32"):
            value = f"max abs diff {par.get('max_abs_action_diff', 0):.2g}"
        else:
            value = f"MAE +{par.get('mae_increase_pct', 0):.2f} %"
        lines.append(
            _row(
                [
                    backend,
                    size,
                    gate,
                    value,
                    par.get("passed"),
                    _fmt((cl.get(backend) or {}).get("mean_abs_cte_m")),
                ]
            )
        )
    lines.append("")
    keys = ("onnx_fp32_p50_ms", "onnx_int8_p50_ms", "litert_p50_ms", "int8_speedup")
    if bench:
        lines += [_row(list(keys)), _row(["---"] * len(keys))]
        lines += [_row([_fmt(bench.get(k)) for k in keys]), ""]
    lines += [
        f"Bundle: {ex.get('bundle_bytes')} bytes; preferred backends "
        f"{', '.join(ex.get('preferred_backends') or [])}.",
        "",
    ]
    if ex.get("failed_gates"):
        lines += [f"Failed a gate, not shipped: {', '.join(ex['failed_gates'])}.", ""]
    return lines


def _ratio(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _memorization_section(m: dict[str, Any]) -> list[str]:
    if not m:
        return []
    trim, summ, cte = m["trim"], m["summary"], m["mean_abs_cte_m"]
    lines = ["## Test-time memorization (mis-trimmed car)", ""]
    lines += [
        f"The trained policy on {', '.join(m['tracks'])}, {m['laps']} lap each, with the steering "
        f"servo mis-trimmed by +{trim:g} and -{trim:g} and without a trim, its memory written at "
        "run time (memory lr 1, memorize) or frozen (lr 0).",
        "",
    ]
    lines += [_row(["steering trim", "memorize: mean abs cte (m)", "frozen: mean abs cte (m)"])]
    lines += [_row(["---"] * 3)]
    for t in (trim, -trim, 0.0):
        mem, frz = cte[condition_key(t, "memorize")], cte[condition_key(t, "frozen")]
        lines.append(_row([f"{t:+.2f}", _fmt(mem), _fmt(frz)]))
    lines += [
        "",
        f"Memorize / frozen under the trim: **{_ratio(summ['ratio_trimmed'])}**; without a trim: "
        f"{_ratio(summ['ratio_untrimmed'])}.  Trim cost (|cte| under the trim / without): "
        f"memorize {_ratio(summ['trim_cost_memorize'])}, frozen "
        f"{_ratio(summ['trim_cost_frozen'])}.",
        "",
        "Below 1x under the trim the memory helps the car hold the line against the mis-trim; "
        "the no-trim pair shows whether freezing is simply worse everywhere (then the gain is "
        "not adaptation).  A report figure, not a release-gate criterion.",
        "",
    ]
    return lines


def _recipe_line(recipe: dict[str, Any]) -> list[str]:
    """Which memorization-recipe switches the model was trained with (docs/training.md)."""
    if not recipe:
        return []
    on = [k for k, v in recipe.items() if v]
    off = [k for k, v in recipe.items() if not v]
    text = ", ".join(f"{k}={recipe[k]}" if k == "memory_dropout" else k for k in on)
    tail = f" (off: {', '.join(off)})" if off else ""
    return [f"Training recipe switches on: {text or 'none'}{tail}.", ""]


def _gate_section(rec: dict[str, Any]) -> list[str]:
    if not rec:
        return []
    g = rec.get("gate") or {}
    verdict = "**passed**" if rec.get("passed") else "**FAILED**"
    if rec.get("forced"):
        verdict += ", published anyway (`--force`; the bundle's manifest records it)"
    elif not rec.get("passed"):
        verdict += ": stopped before export and publishing"
    lines = ["## Release gate", "", f"Verdict: {verdict}.", ""]
    lines += [f"- {r}" for r in rec.get("reasons") or []]
    ratio = rec.get("cte_ratio")
    lines += [
        "",
        f"Runs completed {rec.get('completed')}/{rec.get('runs')} "
        f"(gate {g.get('min_completed_fraction', 0):.0%}, {rec.get('laps_per_run')} lap(s) each, "
        f"gate >= {g.get('min_laps')}); off-track events {rec.get('off_track_events')} "
        f"(gate <= {g.get('max_off_track_events')}); |cte| ratio to the expert "
        f"{'n/a' if ratio is None else f'{ratio:.2f}x'} (gate <= {g.get('max_cte_ratio')}x).",
        "",
    ]
    return lines


def write_report(p: Pipeline) -> dict[str, Any]:
    run = p.run_dir
    figs = p.figures
    lines = [f"# Pipeline run {run.name}", ""]
    lines += ["## Stages", "", _row(["stage", "status", "time", "detail"]), _row(["---"] * 4)]
    for r in p.stages.results.values():
        if r.name == "report":
            continue
        detail = r.error or (r.detail.get("summary") or r.detail.get("why") or "")
        lines.append(_row([r.name, r.status, fmt_s(r.seconds) if r.seconds else "", detail]))
    lines.append("")

    cl = figs.get("closed_loop") or {}
    if cl:
        lines += ["## Closed loop in the simulator (held-out layouts)", ""]
        keys = ["laps", "off_track_events", "mean_abs_cte_m", "max_abs_cte_m", "mean_speed_mps"]
        lines += [_row(["driver", *keys]), _row(["---"] * (len(keys) + 1))]
        for driver, summ in cl.items():
            lines.append(_row([driver, *[_fmt(summ.get(k)) for k in keys]]))
        pol, exp = cl.get("policy", {}), cl.get("expert", {})
        if pol.get("mean_abs_cte_m") and exp.get("mean_abs_cte_m"):
            ratio = pol["mean_abs_cte_m"] / exp["mean_abs_cte_m"]
            figs["cte_ratio_vs_expert"] = ratio
            lines += ["", f"Mean |cross-track error| policy / expert: **{ratio:.2f}x**."]
        lines.append("")

    lines += _recipe_line(figs.get("recipe") or {})
    lines += _memorization_section(figs.get("memorization") or {})
    lines += _gate_section(figs.get("release_gate") or {})
    drive = figs.get("drive") or {}
    if drive:
        lines += ["## Autonomous laps on the robot (the daemon, after the OTA install)", ""]
        lines += [_row(["figure", "value"]), _row(["---", "---"])]
        for k, v in drive.items():
            lines.append(_row([k, _fmt(v)]))
        lines.append("")

    lines += _export_section(figs.get("export") or {}, figs.get("bench") or {})
    upd = figs.get("update")
    if upd:
        lines += ["## Update (OTA)", "", "```json", json.dumps(upd, indent=2), "```", ""]

    lines += ["## Plots", ""]
    metrics = run / "train" / "metrics.ndjson"
    if _plot_training(metrics, run / "training_curve.png"):
        lines.append("![training curve](training_curve.png)")
    samples = figs.pop("latency_samples_ms", None)
    if samples:
        _plot_latency(samples, run / "latency_histogram.png", figs.get("latency_title", ""))
        lines.append("![policy latency](latency_histogram.png)")
    for png in sorted((run / "eval").glob("track_*.png")):
        lines.append(f"![trajectory {png.stem}](eval/{png.name})")
    lines.append("")

    replace_file(run / "report.md", ("\n".join(lines) + "\n").encode("utf-8"))
    data = {
        "run_dir": str(run),
        "stages": {
            n: {"status": r.status, "seconds": r.seconds, "error": r.error}
            for n, r in p.stages.results.items()
        },
        "figures": figs,
    }
    replace_file(run / "report.json", (json.dumps(data, indent=2, default=str) + "\n").encode())
    return {"summary": str(run / "report.md")}

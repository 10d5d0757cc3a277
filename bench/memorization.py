"""Does test-time memorization help against a steering mis-trim?  Memorize vs frozen, per seed.

Issue [model], item 5: with a changed condition (here a mis-trimmed steering servo,
``SimConfig.steering_trim``) the memory, written at run time, should measurably beat the
same policy with the memory frozen (``--memorize`` vs ``--no-memorize`` in
``cloud_jobs evaluate``).  This is the harness behind the table in docs/model.md
("Test-time memorization against a mis-trimmed servo"); tests/test_memorization.py runs
it for one seed.

    python bench/memorization.py --out /tmp/memo --seeds 1 2 3 0 \
        --json bench/results/memorization.json

Per seed:

1. record expert demonstrations at 64x48 (``cloud_jobs.demos``) with steering trims evenly
   spaced in [-0.3, 0.3], trim-aware labels, the car following label + OU noise (so a trim
   shows only in how the car answers its commands);
2. ``cloud_jobs train`` with ``configs/train/memorize.yaml``: the tiny policy with action +
   motion feedback (``ModelConfig.action_feedback``, ``motion_feedback``), the executed
   actions teacher-forced, stateful truncated BPTT (each batch slot walks an episode window
   after window, the detached state carried) and memory dropout (``--frozen-slots`` of the
   16 slots always run frozen, so "frozen" is a condition the policy was trained for, not
   an off-distribution ablation);
3. drive it on ``oval`` (1 lap / 500 ticks) under each trim in ``--trims`` (and its negative)
   and under no trim, memory lr 1 vs 0, and report mean |cross-track error|.

The ratio is memorize / frozen over the +-trims; the no-trim pair shows whether freezing
hurts even without a disturbance (then the "gain" is not adaptation), and the trim cost
(|cte| under the trims / |cte| without) of each says which of the two the trim hurts less.
~4-8 min per seed on one core of a shared 2-core VM (600-1200 iterations).  Episodes (and
their decoded cache) are kept in ``--out``; the runs go to ``--out/run-<preset>-seed<N>``.

``--preset pi5`` runs the same measurement with the shipped ``configs/train/pi5.yaml``
(the on-robot model at 120x160, batch 8, a quarter frozen), demonstrations recorded at
160x120; ``--via-cli`` trains through ``python -m cloud_jobs train`` in a subprocess:

    python bench/memorization.py --preset pi5 --via-cli --out /tmp/memo-pi5 --seeds 1 \
        --episodes 16 --iters 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: The recipe's configs: ``tiny`` (48x64, d=32; the fast harness) and the shipped ``pi5``
#: (120x160): action + motion feedback, stateful TBPTT, teacher forcing, memory dropout.
CONFIGS = {
    "tiny": ROOT / "configs" / "train" / "memorize.yaml",
    "pi5": ROOT / "configs" / "train" / "pi5.yaml",
}
#: Demonstrations are recorded at the model's camera size: (width, height).
SIZES = {"tiny": (64, 48), "pi5": (160, 120)}
SLOTS = 16


def record(
    root: Path, seed: int, episodes: int, steps: int, trim_max: float, preset: str = "tiny"
) -> Path:
    from cloud_jobs import demos

    width, height = SIZES[preset]
    size = "" if preset == "tiny" else f"-{width}x{height}"
    out = root / f"episodes-seed{seed}-{episodes}x{steps}{size}"
    if out.exists():
        return out
    specs = demos.plan_demos(
        ["oval", "kidney"], episodes, steps=steps, width=width, height=height, seed=seed + 1,
        noise=0.1, trim_range=trim_max, label="trim_aware", drive="label",
    )  # fmt: skip
    trims = np.linspace(-trim_max, trim_max, episodes)
    specs = [
        dataclasses.replace(s, steering_trim=round(float(t), 4))
        for s, t in zip(specs, trims, strict=True)
    ]
    demos.record_demos(specs, out, workers=1)
    return out


def train(
    episodes: Path,
    run_dir: Path,
    seed: int,
    iters: int,
    window: int,
    frozen_slots: int | None = None,
    preset: str = "tiny",
    via_cli: bool = False,
) -> Any:
    """``cloud_jobs train`` with the preset's config (:data:`CONFIGS`) on the recorded
    episodes: in this process, or with ``via_cli`` as ``python -m cloud_jobs train``."""
    from brain.model import load_policy
    from cloud_jobs.train import run_training
    from cloud_jobs.train.config import load_train_config

    cfg = load_train_config(CONFIGS[preset])
    slots = SLOTS if preset == "tiny" else cfg.train.batch_size
    frozen = round(slots / 4) if frozen_slots is None else frozen_slots
    cfg = cfg.with_updates(
        seed=seed,
        device="cpu",
        data={
            "sources": [{"path": str(episodes)}],
            "cache_dir": str(episodes) + "-cache",
            "holdout": {"fraction": 0.0, "tracks": [], "episodes": []},
        },
        train={
            "steps": iters, "window": window, "batch_size": slots, "progress": "off",
            "eval_every": None, "max_minutes": None,
        },
        recurrence={"memory_dropout": frozen / slots},
    )  # fmt: skip
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: the harness measures, it does not resume
    if via_cli:
        run_dir.mkdir(parents=True)
        path = run_dir.with_name(run_dir.name + ".yaml")
        path.write_text(cfg.to_yaml())
        cmd = [sys.executable, "-m", "cloud_jobs", "train", "--config", str(path)]
        subprocess.run([*cmd, "--run-dir", str(run_dir)], check=True, cwd=ROOT)
    else:
        run_training(cfg, run_dir=run_dir)
    policy = load_policy(run_dir / "policy.pt")
    policy.set_memorize(lr=1.0)
    return policy.eval()


def drive(policy: Any, trims: list[float], max_steps: int = 500) -> dict[str, float]:
    """mean |cte| (m) on oval per (trim, memory lr)."""
    from cloud_jobs import evaluate

    out = {}
    for trim in trims:
        for lr in (1.0, 0.0):
            cond = evaluate.EvalConditions(
                laps=1, max_steps=max_steps, steering_trim=trim, render_size="model"
            )
            row, _ = evaluate.run_drive(evaluate.TorchDriver(policy, memory_lr=lr), "oval", cond)
            out[f"{trim:+.2f}/{'memorize' if lr else 'frozen'}"] = row["mean_abs_cte_m"]
    return out


def ratio(a: float, b: float) -> float | None:
    """a / b, None where b is 0 (a drive too short to leave the line: nothing to compare)."""
    return float(a / b) if b > 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="cache for the recorded episodes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--trim-max", type=float, default=0.3)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument(
        "--frozen-slots", type=int, default=None, help="of the batch (default: a quarter)"
    )
    ap.add_argument("--preset", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--via-cli", action="store_true", help="train as `python -m cloud_jobs train`")
    ap.add_argument("--trims", type=float, nargs="+", default=[0.15])
    ap.add_argument("--max-steps", type=int, default=500, help="ticks per closed-loop drive")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    trims = [t for m in args.trims for t in (m, -m)] + [0.0]
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        episodes = record(args.out, seed, args.episodes, args.steps, args.trim_max, args.preset)
        run_dir = args.out / f"run-{args.preset}-seed{seed}"
        policy = train(
            episodes, run_dir, seed, args.iters, args.window, args.frozen_slots,
            preset=args.preset, via_cli=args.via_cli,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        cte = drive(policy, trims, args.max_steps)
        mem = np.mean([cte[f"{t:+.2f}/memorize"] for t in trims if t])
        frz = np.mean([cte[f"{t:+.2f}/frozen"] for t in trims if t])
        rows.append(
            {
                "seed": seed,
                "mean_abs_cte_m": cte,
                "ratio_trimmed": ratio(mem, frz),
                "ratio_untrimmed": ratio(cte["+0.00/memorize"], cte["+0.00/frozen"]),
                # what the trim costs each: adaptation is the memorizing policy paying less
                "trim_cost_memorize": ratio(mem, cte["+0.00/memorize"]),
                "trim_cost_frozen": ratio(frz, cte["+0.00/frozen"]),
                "train_s": round(train_s, 1),
            }
        )
        print(f"seed {seed} done in {time.perf_counter() - t0:.0f} s", flush=True)

    print(
        f"\n{'seed':>4}  "
        + "  ".join(f"{t:+.2f} mem/frz" for t in trims)
        + "  ratio  ratio@0  cost mem/frz"
    )
    for r in rows:
        cells = "  ".join(
            f"{r['mean_abs_cte_m'][f'{t:+.2f}/memorize']:.3f}/{r['mean_abs_cte_m'][f'{t:+.2f}/frozen']:.3f}"
            for t in trims
        )
        keys = ("ratio_trimmed", "ratio_untrimmed", "trim_cost_memorize", "trim_cost_frozen")
        f = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in keys]
        print(f"{r['seed']:>4}  {cells}  {f[0]}   {f[1]}    {f[2]}/{f[3]}")
    ratios = [r["ratio_trimmed"] for r in rows if r["ratio_trimmed"] is not None]
    summary = {
        "median_ratio_trimmed": float(np.median(ratios)) if ratios else None,
        "seeds_helped": sum(r < 0.9 for r in ratios),
        "seeds_adapted": sum(
            r["trim_cost_memorize"] is not None
            and r["trim_cost_frozen"] is not None
            and r["trim_cost_memorize"] < r["trim_cost_frozen"]
            for r in rows
        ),
        "seeds": len(rows),
    }
    helped = f"{summary['seeds_helped']}/{summary['seeds']}"
    median = summary["median_ratio_trimmed"]
    print(
        f"median ratio {median if median is None else round(median, 2)}; "
        f"memorize < 0.9x frozen: {helped}; "
        f"trim hurts memorize less: {summary['seeds_adapted']}/{summary['seeds']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k not in ("out", "json")}
        report = {"config": config, "train_config": str(CONFIGS[args.preset].relative_to(ROOT))}
        report.update(runs=rows, summary=summary)
        args.json.write_text(json.dumps(report, indent=1, default=list) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``cloud_jobs train``: behaviour cloning of the policy on recorded episodes.

    cloud_jobs train --config configs/train/pi5.yaml [--run-dir DIR] [--resume] [--max-minutes N]
    torchrun --standalone --nproc_per_node=2 -m cloud_jobs train --config ...

What a run writes (``docs/training.md``): ``<run_dir>/config.yaml`` (the resolved
config), ``metrics.ndjson``, ``checkpoints/step-XXXXXXXX.pt``, ``last.pt`` and
``best.pt``, ``summary.json`` and the final ``policy.pt`` (``brain.model.save_policy``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["cli_main", "run_training"]


def run_training(
    config: str | os.PathLike[str] | Any,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train from a config file path or a ``TrainConfig``; returns the run's summary."""
    from cloud_jobs.train.config import TrainConfig, load_train_config
    from cloud_jobs.train.loop import train

    source = None
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        source = str(config)
        cfg = load_train_config(config)
    rd = Path(run_dir) if run_dir is not None else Path(cfg.run_dir or Path("runs") / cfg.name)
    kwargs: dict[str, Any] = {
        "run_dir": rd,
        "resume": resume,
        "max_minutes": max_minutes,
        "stop_at_step": stop_at_step,
        "config_source": source,
    }
    if (
        cfg.device == "xla"
        and os.environ.get("PJRT_DEVICE", "").upper() == "TPU"
        and os.environ.get(_XLA_CHILD_ENV) != "1"
    ):
        # One process per TPU chip (PJRT): torch_xla.launch spawns them and waits.
        from cloud_jobs.train.dist import import_xla

        torch_xla, _, _ = import_xla()
        os.environ[_XLA_CHILD_ENV] = "1"
        torch_xla.launch(_xla_process, args=(cfg.model_dump(mode="json"), kwargs))
        return json.loads((rd / "summary.json").read_text(encoding="utf-8"))
    return train(cfg, **kwargs)


_XLA_CHILD_ENV = "CONTINUON_XLA_CHILD"


def _xla_process(index: int, raw_cfg: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Entry of each process that ``torch_xla.launch`` starts (one per TPU chip)."""
    from cloud_jobs.train.config import TrainConfig
    from cloud_jobs.train.loop import train

    os.environ[_XLA_CHILD_ENV] = "1"
    train(TrainConfig.model_validate(raw_cfg), **kwargs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloud_jobs train",
        description="Train the policy by behaviour cloning on recorded episodes "
        "(native episode roots or TFDS exports). Multi-process: launch with torchrun.",
    )
    p.add_argument("--config", required=True, help="training config YAML (configs/train/*.yaml)")
    p.add_argument("--run-dir", help="where the run's files go (default: run_dir or runs/<name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from <run_dir>/checkpoints/last.pt"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget: stop cleanly with a checkpoint when it is spent",
    )
    p.add_argument(
        "--stop-at-step",
        type=int,
        help="stop cleanly with a checkpoint after this optimiser step (the schedule still "
        "plans the full run; continue with --resume)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def cli_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = os.environ.get("RANK")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=(f"[rank {rank}] " if rank else "") + "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from cloud_jobs.train.config import TrainConfigError
    from cloud_jobs.train.data import DataError
    from cloud_jobs.train.dist import DistError
    from cloud_jobs.train.errors import TrainingError

    try:
        summary = run_training(
            args.config,
            run_dir=args.run_dir,
            resume=args.resume,
            max_minutes=args.max_minutes,
            stop_at_step=args.stop_at_step,
        )
    except (TrainConfigError, DataError, DistError, TrainingError) as e:
        print(f"cloud_jobs train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cloud_jobs train: interrupted", file=sys.stderr)
        return 130
    return 0 if summary.get("ranks_in_sync", True) else 1

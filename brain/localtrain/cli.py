"""``continuon train-local``: one fine-tune in the foreground, without the daemon.

Standalone on purpose: it needs nothing running, and prints the worker's progress as it
goes.  While the daemon runs, the daemon owns the robot (it alone knows whether the robot is
moving and puts it in TRAINING mode), so this command refuses and points to the daemon's own
training start (companion app / Robot API).  Ctrl-C stops the worker cleanly with a
checkpoint; ``--resume`` continues it.  An accepted candidate is packed as a local bundle
and staged in the OTA slots (the daemon runs its trial with the health window at its next
start), unless ``--no-promote``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from brain.control_client import daemon_running


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser(
        "train-local",
        help="fine-tune the policy on this robot's episodes (LoRA), in the foreground",
    )
    add_config(p)
    p.add_argument(
        "--steps", type=int, help="optimiser steps (at least local_train.steps, the default)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        help="training time budget (at least local_train.max_seconds, the default)",
    )
    p.add_argument("--resume", action="store_true", help="continue the last unfinished run")
    p.add_argument("--no-promote", action="store_true", help="stop after the gate and export")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=cmd_train_local)


def _cli_promoter(config: Any) -> Any:
    """Stage through the OTA slots (no daemon: the trial runs at the daemon's next start)."""
    from brain.localtrain.base import committed_base
    from brain.localtrain.promote import Promoter

    def updater() -> Any:
        # The same wiring as the daemon and `continuon ota`: trust anchor, repository and
        # this robot's device key, so a local bundle is checked exactly as in the daemon.
        from brain.ota.wiring import create_updater

        return create_updater(config)

    def install(archive: Path) -> dict[str, Any]:
        return asyncio.run(updater().install(archive))

    return Promoter(config, base_info=lambda: committed_base(config), install=install)


def cmd_train_local(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from brain.interface import CommandError
    from brain.localtrain.manager import LocalTrainManager
    from brain.localtrain.options import validation_text

    config = args.load_config()
    if daemon_running(config):
        print(
            "continuon train-local: the daemon is running and owns the robot; start the "
            "fine-tune through it (companion app or Robot API), or stop the daemon first",
            file=sys.stderr,
        )
        return 1
    opts: dict[str, Any] = {}
    if args.steps is not None:
        opts["steps"] = args.steps
    if args.max_seconds is not None:
        opts["max_seconds"] = args.max_seconds
    if args.resume:
        opts["resume"] = True
    promoter = None if args.no_promote else _cli_promoter(config)
    mgr = LocalTrainManager(config, promoter=promoter)
    try:
        st = mgr.start(opts)
    except CommandError as exc:
        print(f"continuon train-local: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"continuon train-local: {validation_text(exc)}", file=sys.stderr)
        return 2
    print(f"fine-tune started: run {mgr.run_dir(st)} (pid {st['pid']})", file=sys.stderr)
    last_step = -1
    try:
        while mgr.running:
            st = mgr.wait(1.0)
            step = st.get("step") or 0
            if step != last_step and st.get("loss") is not None:
                last_step = step
                print(
                    f"step {step}/{st.get('steps')} loss {st['loss']:.4f} "
                    f"elapsed {st.get('elapsed_s')} s eta {st.get('eta_s')} s"
                    + (" [paused by the resource guard]" if st.get("paused") else ""),
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        print("stopping (checkpoint; continue with --resume) ...", file=sys.stderr)
        mgr.stop("Ctrl-C")
        while mgr.running:
            time.sleep(0.2)
    st = mgr.status()
    if args.json:
        print(json.dumps(st, indent=1, default=str))
    else:
        print(f"{st['state']}: {st.get('message') or ''}")
        promo = (st.get("last_result") or {}).get("promotion")
        if promo:
            print(
                "promotion: "
                + ("installed " + str(promo.get("version")) if promo.get("installed") else "")
                + (promo.get("error") or "")
            )
    return 0 if st["state"] == "finished" else 1

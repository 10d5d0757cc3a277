"""`continuon hw-check`: run the checks, print a table, optionally write a JSON log.

Exit code 0 when no check FAILed (SKIP and WARN do not fail the run), 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from brain.config import Config
from brain.hwcheck.checks import CHECKS, CheckContext, CheckFn, CheckResult, count, run_checks
from common.durable import replace_file

NAME_WIDTH = 11
STATUS_WIDTH = 6


def format_row(res: CheckResult) -> str:
    return f"{res.name:<{NAME_WIDTH}} {res.status:<{STATUS_WIDTH}} {res.summary}"


def format_header() -> str:
    head = f"{'CHECK':<{NAME_WIDTH}} {'STATUS':<{STATUS_WIDTH}} SUMMARY"
    return f"{head}\n{'-' * NAME_WIDTH} {'-' * STATUS_WIDTH} {'-' * 60}"


def summary_line(counts: dict[str, int]) -> str:
    return (
        f"hw-check: {counts['PASS']} PASS, {counts['WARN']} WARN, "
        f"{counts['FAIL']} FAIL, {counts['SKIP']} SKIP"
    )


def format_table(results: list[CheckResult]) -> str:
    """The whole report as printed: header, one row per check, the counts line."""
    rows = [format_header(), *(format_row(r) for r in results)]
    return "\n".join([*rows, summary_line(count(results))])


def build_log(
    config: Config,
    results: list[CheckResult],
    *,
    sim: bool,
    move: bool,
    config_path: str | None = None,
) -> dict[str, Any]:
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "robot_id": config.robot.id,
        "config": {
            "path": config_path,
            "hash": config.config_hash(),
            "robot_kind": config.robot.kind,
            "effective": config.model_dump(mode="json"),
        },
        "sim": sim,
        "move": move,
        "results": [r.as_dict() for r in results],
        "summary": count(results),
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    # 0600: what the report had when it was written through mkstemp directly.
    replace_file(path, text.encode("utf-8"), mode=0o600)


def run(
    config: Config,
    *,
    sim: bool = False,
    move: bool = False,
    log_json: Path | None = None,
    config_path: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    checks: tuple[tuple[str, CheckFn], ...] = CHECKS,
    context_factory: Callable[..., CheckContext] = CheckContext,
    **context_kwargs: Any,
) -> int:
    """Run the checks, print the table (rows as they finish), write the log; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr

    def say(msg: str) -> None:
        print(msg, file=err, flush=True)

    ctx = context_factory(config=config, sim=sim, move=move, say=say, **context_kwargs)
    target = "the simulated robot" if sim else "this machine's hardware"
    print(
        f"continuon hw-check: robot {config.robot.id} ({config.robot.kind}) on {target}"
        f"{', moving actuators' if move else ', actuators are not moved (no --move)'}",
        file=out,
    )
    if config_path:
        print(f"config: {config_path}", file=out)
    print(format_header(), file=out, flush=True)
    t0 = time.monotonic()
    results = run_checks(
        ctx, checks, on_result=lambda r: print(format_row(r), file=out, flush=True)
    )
    counts = count(results)
    if log_json is not None:
        payload = build_log(config, results, sim=sim, move=move, config_path=config_path)
        write_json_atomic(log_json, payload)
        print(f"results written to {log_json}", file=out)
    print(f"took {time.monotonic() - t0:.1f} s", file=out)
    print(summary_line(counts), file=out, flush=True)
    return 1 if counts["FAIL"] else 0


def run_cli(args: Any) -> int:
    """Entry point for `continuon hw-check` (brain.cli)."""
    config = args.load_config()
    config_path = getattr(args, "config", None)
    if config_path is None:
        from brain.config import default_config_path

        config_path = default_config_path()
    return run(
        config,
        sim=bool(getattr(args, "sim", False)),
        move=bool(getattr(args, "move", False)),
        log_json=getattr(args, "log_json", None),
        config_path=str(config_path),
    )

"""The `continuon` command.

Subcommands of other packages (the edge agent's `status`, `mode`, ...) plug in
through the ``continuon.cli`` entry-point group, so the brain stays unaware of
them.  Loading a plug-in imports its module, so a built-in command (above all
`run`, the daemon) is parsed without them: the daemon's process then holds
only what the robot needs, never ``cloud_jobs`` (README, "A lean daemon").
Exit codes: 0 ok, 1 the thing checked failed, 2 usage/config errors.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from brain import __version__
from brain.paths import default_config_path

if TYPE_CHECKING:
    from brain.config import Config

# brain.config (pydantic) and the plugins are imported when needed, not here: `continuon
# estop` must reach the daemon before a Pi has finished importing them (brain/estop_client.py).

_log = logging.getLogger("continuon")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="robot config YAML (default: $CONTINUON_CONFIG, /etc/continuon/robot.yaml, "
        "or the packaged configs/sim-donkey.yaml)",
    )


def _load(args: argparse.Namespace) -> Config:
    from brain.config import load_config

    return load_config(args.config or default_config_path())


# ----------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from brain.logs import setup_logging

    config = args.load_config()
    setup_logging(args.log_level or config.logging.level, args.log_format or config.logging.format)
    from brain.daemon import Daemon, tune_process

    tune_process()
    try:
        daemon = Daemon(config)
    except Exception as exc:
        _log.critical("cannot start: %s", exc)
        return 1
    import asyncio

    asyncio.run(daemon.run())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from brain.config import ConfigError, load_config

    status = 0
    for path in args.files or [default_config_path()]:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(
            f"{path}: OK (robot {cfg.robot.id}, {cfg.robot.kind}, actions "
            f"{', '.join(cfg.action_names)}, {'sim' if cfg.uses_sim else 'hardware'})"
        )
    return status


def cmd_safe_stop(args: argparse.Namespace) -> int:
    from brain.hardware.pca9685 import safe_stop

    config = args.load_config()
    try:
        lines = safe_stop(config)
    except Exception as exc:
        print(f"continuon safe-stop: FAILED: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"safe-stop: {line}")
    return 0


def cmd_hw_check(args: argparse.Namespace) -> int:
    from brain.hwcheck.report import run_cli

    return run_cli(args)


# ----------------------------------------------------------------------------- parser


#: Commands this module and brain's own sub-modules register; parsed without plug-ins.
BUILTIN_COMMANDS = frozenset({"run", "config", "safe-stop", "hw-check"})


def _wants_plugins(argv: list[str]) -> bool:
    """False when the first positional argument names a built-in command."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command not in BUILTIN_COMMANDS


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continuon", description="Continuon Brain: robot runtime and tools."
    )
    parser.add_argument("--version", action="version", version=f"continuon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    _add_config(p)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["auto", "json", "text"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    pc = csub.add_parser("check", help="validate config files and explain every problem")
    pc.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="default: $CONTINUON_CONFIG, /etc/continuon/robot.yaml, or the packaged sim config",
    )
    pc.set_defaults(func=cmd_config_check)

    p = sub.add_parser("safe-stop", help="write neutral straight to the PWM board (ExecStopPost)")
    _add_config(p)
    p.set_defaults(func=cmd_safe_stop)

    p = sub.add_parser("hw-check", help="check the robot's hardware (PASS/WARN/FAIL per check)")
    _add_config(p)
    p.add_argument("--sim", action="store_true", help="run the checks against the simulated robot")
    p.add_argument(
        "--move", action="store_true", help="also move actuators (wheels off the ground!)"
    )
    p.add_argument("--log-json", type=Path, help="write the results as JSON here")
    p.set_defaults(func=cmd_hw_check)

    from brain.episodes_cli import register as register_episodes

    register_episodes(sub, _add_config)

    from brain.ota.cli import register as register_ota

    register_ota(sub, _add_config)

    from brain.localtrain.cli import register as register_train_local

    register_train_local(sub, _add_config)

    if not plugins:
        return parser
    for ep in entry_points(group="continuon.cli"):
        try:
            ep.load()(sub, _add_config)
        except Exception as exc:  # a broken plugin must not take the safety commands with it
            print(f"continuon: plugin {ep.name} unavailable: {exc}", file=sys.stderr)
    return parser


def _fast_estop(argv: list[str]) -> int | None:
    """`continuon estop` by signal, before anything slow is imported; None: use the socket."""
    if argv[:1] != ["estop"]:
        return None
    from brain import estop_client

    config, other = estop_client.main_args(argv[1:])
    if other:
        return None  # --help and the like: the full parser answers
    return estop_client.run(config or default_config_path())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        # Before numpy/ONNX Runtime start native threads: every thread inherits the block,
        # so a process-wide SIGUSR1 (`systemctl kill`) reaches only the e-stop line.
        from brain.control.estop_line import block

        block()
    fast = _fast_estop(argv)
    if fast is not None:
        return fast
    from brain.config import ConfigError

    parser = build_parser(plugins=_wants_plugins(argv))
    args = parser.parse_args(argv)
    args.load_config = functools.partial(_load, args)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``cloud_jobs``: the cloud-side command (training, evaluation, ...).

Each subcommand lives in its own module, imported only when it runs (training
pulls in torch; ``cloud_jobs --help`` must not), and exposes
``cli_main(argv: list[str]) -> int``.  Add a subcommand by adding a line to
``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("cloud_jobs.train", "cli_main", "train the policy on episodes (torchrun for DDP)"),
    "record-demos": (
        "cloud_jobs.demos",
        "record_demos_main",
        "record expert demonstrations in the simulator (DART noise injection)",
    ),
    "evaluate": (
        "cloud_jobs.evaluate",
        "cli_main",
        "evaluate a policy in closed loop in the simulator",
    ),
    "bundle": ("cloud_jobs.bundle", "cli_main", "pack an export into a signed-ready edge bundle"),
    "publish": ("cloud_jobs.publish.cli", "publish_main", "publish a bundle to a TUF repository"),
    "keys": ("cloud_jobs.publish.cli", "keys_main", "TUF signing keys: init, rotate-root, list"),
    "ingest": (
        "cloud_jobs.ingest",
        "cli_main",
        "receive robot uploads (resumable HTTP PUT), checked against the export manifest",
    ),
    "export": (
        "cloud_jobs.export",
        "cli_main",
        "export a policy to ONNX FP32/INT8 + LiteRT (+ mobile) with parity gates",
    ),
    "pipeline": (
        "cloud_jobs.pipeline.cli",
        "cli_main",
        "end-to-end run on the simulated robot (same as `continuon pipeline`)",
    ),
    "bench": (
        "cloud_jobs.bench",
        "cli_main",
        "latency of the exported policy per backend, provider and thread count",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [f"  {n:<{width}}  {h}" for n, (_, _, h) in SUBCOMMANDS.items()]
    return (
        "usage: cloud_jobs <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`cloud_jobs <command> --help` for a command's options."
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"cloud_jobs: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = SUBCOMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            print(f"cloud_jobs {name}: not available ({module} is not installed)", file=sys.stderr)
            return 2
        raise
    return int(getattr(mod, func)(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Where the config, state and runtime files are: one rule, stdlib only.

``Config.state_dir()``/``runtime_dir()``, the default-config lookup and the fast
``continuon estop`` path (which must not pay for pydantic, numpy or aiohttp imports)
all resolve them here, so they can never disagree about where the daemon is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The shipped configs.  ``brain/configs`` is a symlink to the top-level ``configs/`` in the
#: source tree and a real directory in an installed wheel, so one path serves both.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: The simulated donkey car: what runs when nothing else is configured.
DEFAULT_CONFIG = CONFIG_DIR / "sim-donkey.yaml"
#: The installed robot's config (systemd/install.sh writes it).
SYSTEM_CONFIG = Path("/etc/continuon/robot.yaml")
CONFIG_ENV = "CONTINUON_CONFIG"


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """The config a command reads without ``--config``.

    ``$CONTINUON_CONFIG``, else the installed robot's ``/etc/continuon/robot.yaml``,
    else the packaged simulated donkey car, so that a fresh install runs the sim.
    """
    value = env.get(CONFIG_ENV)
    if value:
        return Path(value)
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return DEFAULT_CONFIG


def state_dir(
    configured: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ
) -> Path:
    """paths.state_dir, else systemd's $STATE_DIRECTORY, else ~/.local/state/continuon."""
    if configured is not None:
        return Path(configured)
    value = env.get("STATE_DIRECTORY")
    if value:
        return Path(value.split(":")[0])
    return Path.home() / ".local" / "state" / "continuon"


def runtime_dir(
    configured: str | os.PathLike[str] | None,
    configured_state: str | os.PathLike[str] | None,
    env: Mapping[str, str] = os.environ,
) -> Path:
    """paths.runtime_dir, else systemd's $RUNTIME_DIRECTORY, else <state_dir>/run."""
    if configured is not None:
        return Path(configured)
    value = env.get("RUNTIME_DIRECTORY")
    if value:
        return Path(value.split(":")[0])
    return state_dir(configured_state, env) / "run"

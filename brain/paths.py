"""Where the daemon keeps its state and runtime files: one rule, stdlib only.

``Config.state_dir()``/``runtime_dir()`` and the fast ``continuon estop`` path
(which must not pay for pydantic, numpy or aiohttp imports) both resolve the
directories here, so they can never disagree about where the daemon is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


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

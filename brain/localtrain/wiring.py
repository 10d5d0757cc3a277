"""How the daemon builds its fine-tune manager (kept here so the daemon's own edit stays small).

* "moving": the control loop's last output was not neutral, or (simulated robot) the car
  still rolls faster than :data:`MOVING_SPEED_MPS`;
* promotion installs through the daemon's OTA updater (``BrainHandle.updater``) on the
  daemon's event loop, so the hot swap, health window and rollback are the updater's own;
  the base it derives from is the committed bundle as the updater's state file and slot
  record it (:func:`brain.localtrain.base.committed_base`), the same check the manager
  made before training.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.config import Config
from brain.localtrain.base import committed_base
from brain.localtrain.manager import LocalTrainManager
from brain.localtrain.promote import Promoter

MOVING_SPEED_MPS = 0.05
INSTALL_TIMEOUT_S = 900.0


def make_daemon_trainer(
    config: Config,
    *,
    modes: Any,
    control: Any,
    sim_metrics: Callable[[], dict[str, Any]] | None,
    updater: Callable[[], Any | None],
    loop: Callable[[], asyncio.AbstractEventLoop | None],
) -> LocalTrainManager | None:
    """The daemon's manager, or None when ``local_train.enabled`` is false."""
    if not config.local_train.enabled:
        return None

    def is_moving() -> bool:
        out = control.last_output
        if out is not None and not out.neutral:
            return True
        if sim_metrics is not None:
            speed = sim_metrics().get("speed_mps")
            if speed is not None and abs(float(speed)) > MOVING_SPEED_MPS:
                return True
        return False

    def install(archive: Path) -> dict[str, Any]:
        u, lp = updater(), loop()
        if u is None or lp is None:
            raise RuntimeError("the OTA updater is not running")
        fut = asyncio.run_coroutine_threadsafe(u.install(archive), lp)
        result: dict[str, Any] = fut.result(INSTALL_TIMEOUT_S)
        return result

    promoter = Promoter(config, base_info=lambda: committed_base(config), install=install)
    return LocalTrainManager(config, modes=modes, is_moving=is_moving, promoter=promoter)

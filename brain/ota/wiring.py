"""Building the robot's Updater from its config: trust anchor, repository, device key.

Kept apart from :mod:`brain.ota.updater` so that the state machine can be built
and tested with any trust callables, and so that the daemon and the CLI build
exactly the same updater.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.config import Config
from brain.ota.updater import Updater

if TYPE_CHECKING:
    from brain.policy import PolicyRunner

_log = logging.getLogger(__name__)


def metadata_dir(config: Config) -> Path:
    return config.ota_dir() / "metadata"


def provision_trust(config: Config) -> None:
    """Install ``ota.trusted_root`` as the trust anchor the first time (never silently replaced)."""
    root = config.ota.trusted_root
    if root is None:
        return
    from brain.ota.trust import init_trust

    init_trust(metadata_dir(config), Path(root).read_bytes())


def repository_factory(config: Config) -> Callable[[str | Path | None], Any]:
    """``source`` None: the configured repository; else a side-loaded directory."""
    meta = metadata_dir(config)
    downloads = config.ota_dir() / "downloads"

    def make(source: str | Path | None) -> Any:
        from brain.ota.trust import TrustedRepository

        src = source if source is not None else config.ota.repository_url
        if src is None:
            raise ValueError("no update repository configured (ota.repository_url)")
        return TrustedRepository(meta, src, downloads)

    return make


def device_public_key_path(config: Config) -> Path | None:
    """``ota.device_public_key``, else the robot's own key ``<state_dir>/device_key.pub``."""
    if config.ota.device_public_key is not None:
        return Path(config.ota.device_public_key)
    from brain.ota.device_key import PUBLIC_NAME

    own = config.state_dir() / PUBLIC_NAME
    return own if own.exists() else None


def local_verifier(config: Config) -> Callable[[Path, Any], Any]:
    """Checks a bundle fine-tuned on this robot: device key + derived from the committed base."""

    def verify(bundle_dir: Path, state: Any) -> Any:
        from brain.bundle.manifest import read_manifest
        from brain.ota.device_key import verify_local_bundle
        from brain.ota.slots import Slots
        from brain.ota.updater import UpdateRefused

        base = state.committed
        if base is None:
            raise UpdateRefused("a local bundle needs a committed cloud base; none is installed")
        key = device_public_key_path(config)
        if key is None:
            raise UpdateRefused(
                "no device public key (ota.device_public_key, or <state_dir>/device_key.pub)"
            )
        slots = Slots(config.ota_dir())
        # The base's manifest is compared field by field below (source, hardware, specs):
        # it must be the very file the updater committed, not whatever lies in the slot now.
        if slots.manifest_sha256(base.slot) != base.manifest_sha256:
            raise UpdateRefused(
                f"the committed slot {base.slot} no longer holds the committed bundle "
                f"{base.version}; a local bundle cannot be checked against it"
            )
        base_manifest = read_manifest(slots.path(base.slot))
        return verify_local_bundle(
            bundle_dir,
            device_public_key=key,
            committed_base=base_manifest,
            committed_base_manifest_sha256=base.manifest_sha256,
        )

    return verify


class PolicyInterventions:
    """Safety interventions attributable to the policy: counted only while it drives.

    The safety layer counts non-finite and clamped commands whoever sent them; a
    joystick pushed past a throttle limit in MANUAL must not fail a new model's
    trial.  The health monitor polls this every few tens of ms, so a delta is
    attributed by the mode at poll time.
    """

    def __init__(self, safety: Any, modes: Any, config: Config):
        self._safety = safety
        self._modes = modes
        self._policy_drives = config.control.autopilot == "policy"
        self._last = self._raw()
        self._total = 0

    def _raw(self) -> int:
        c = self._safety.counts
        return int(c["non_finite"] + c["clamped"])

    def __call__(self) -> int:
        from brain.modes import Mode

        raw = self._raw()
        if self._policy_drives and self._modes.mode is Mode.AUTONOMOUS:
            self._total += raw - self._last
        self._last = raw
        return self._total


def create_updater(
    config: Config,
    *,
    policy: PolicyRunner | None = None,
    interventions: Callable[[], int] | None = None,
    stop_motion: Callable[[str], object] | None = None,
) -> Updater:
    """The updater for this robot (not yet opened: call ``open()`` to lock and recover)."""
    try:
        provision_trust(config)
    except Exception as exc:  # the robot still boots on its committed slot
        _log.error("ota: trusted root %s not installed: %s", config.ota.trusted_root, exc)
    return Updater(
        config.ota_dir(),
        config.ota,
        hardware_id=config.ota_hardware_id(),
        action_names=config.action_names,
        policy=policy,
        interventions=interventions,
        threads=config.policy.threads,
        repository=repository_factory(config),
        verify_local=local_verifier(config),
        stop_motion=stop_motion,
    )

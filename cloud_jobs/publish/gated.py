"""Publishing through the release gate: judge the evaluation, stamp the verdict, publish.

``publish_bundle`` (repository.py) is the TUF mechanism and takes any bundle; this is the
policy ``cloud_jobs publish`` and the pipeline apply on top of it (cloud_jobs.release).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from brain.bundle.manifest import ReleaseGate, ReleaseRecord
from brain.bundle.unpack import read_archive_manifest
from cloud_jobs.publish.repository import Repository, publish_bundle
from cloud_jobs.release import ReleaseRefused, judge, load_evaluation, stamp_bundle


def publish_released(
    repo: Repository,
    bundle: Path,
    *,
    evaluation: Path | None,
    gate: ReleaseGate,
    force: bool = False,
    **expect: Any,
) -> tuple[TargetFile, ReleaseRecord]:
    """Judge, stamp and publish ``bundle`` to ``repo``.

    ``expect``: release_counter / hardware_id / version the manifest must match.  Raises
    ReleaseRefused (nothing published) when the gate fails and ``force`` is not set.
    """
    manifest = read_archive_manifest(bundle)
    data, digest = load_evaluation(evaluation) if evaluation is not None else (None, None)
    record = judge(
        data,
        gate,
        checkpoint_sha256=manifest.provenance.checkpoint_sha256,
        evaluation_sha256=digest,
        forced=force,
    )
    if not record.passed and not force:
        raise ReleaseRefused("release gate failed: " + "; ".join(record.reasons))
    with tempfile.TemporaryDirectory(dir=Path(bundle).parent, prefix=".publish-") as tmp:
        stamped = Path(tmp) / Path(bundle).name
        stamp_bundle(Path(bundle), record, stamped)
        target = publish_bundle(repo, stamped, **expect)
    return target, record

"""The training run's own error (data errors are ``data.DataError``, config errors
``config.TrainConfigError``, process-group errors ``dist.DistError``)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on; ``str()`` says why and what to do."""

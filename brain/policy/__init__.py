"""The policy runner: ONNX step graphs run on a worker thread with carried state and hot swap.

See :mod:`brain.policy.contract` (the model contract, ``docs/policy-contract.md``, checked
once for every backend), :mod:`brain.policy.onnx_model` (ONNX Runtime)
and :mod:`brain.policy.runner`.  :mod:`brain.policy.testing` (graph builders,
needs the ``dev`` extra) is not imported here.
"""

from .backends import BACKENDS, BackendUnavailable, load_backend, load_preferred
from .contract import (
    ACTION_OUTPUT,
    IMAGE_INPUT,
    RECURRENT_OUTPUT_SUFFIX,
    PolicyLoadError,
    RecurrentSpec,
)
from .onnx_model import LoadedModel, load_model
from .runner import InferenceResult, PolicyRunner, SwapTicket, default_deadline_s

__all__ = [
    "ACTION_OUTPUT",
    "BACKENDS",
    "IMAGE_INPUT",
    "RECURRENT_OUTPUT_SUFFIX",
    "BackendUnavailable",
    "InferenceResult",
    "LoadedModel",
    "PolicyLoadError",
    "PolicyRunner",
    "RecurrentSpec",
    "SwapTicket",
    "default_deadline_s",
    "load_backend",
    "load_model",
    "load_preferred",
]

"""``cloud_jobs export``: a trained policy -> ONNX FP32, ONNX INT8, LiteRT (and mobile) files,
each checked for parity against the PyTorch policy before it may go into an edge bundle.

Modules: :mod:`.episodes` (frames and labels from RLDS episodes), :mod:`.onnx_step`
(FP32 step graph + ``onnx.checker``), :mod:`.quantize` (INT8 via
:func:`brain.model.quantize.quantize_int8`), :mod:`.litert` (litert-torch), :mod:`.mobile`
(Android metadata, Core ML), :mod:`.parity` (open-loop parity and closed-loop gate),
:mod:`.report` (``export_report.json``), :mod:`.pipeline` (the whole run), :mod:`.cli`.
See ``docs/export.md``.
"""

from .cli import cli_main
from .pipeline import ExportOptions, run_export

__all__ = ["ExportOptions", "cli_main", "run_export"]

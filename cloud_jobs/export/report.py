"""``export_report.json``: what was exported, how it was checked, which backends may be used.

The OTA helper's ``cloud_jobs bundle`` builds the edge bundle from this file, so its keys
are a contract (``docs/export.md``); it is written atomically (temp file + rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.digest import sha256_file
from common.durable import write_json

REPORT_NAME = "export_report.json"
#: Order of preference on the robot (fastest first), filtered to the backends that passed.
PREFERENCE = ("onnx_int8", "litert_fp32", "onnx_fp32")
ARTIFACT_FILES = {
    "onnx_fp32": "model_fp32.onnx",
    "onnx_int8": "model_int8.onnx",
    "litert_fp32": "model_fp32.tflite",
}


def artifact_entry(out: Path, backend: str, passed: bool) -> dict[str, Any]:
    path = out / ARTIFACT_FILES[backend]
    return {
        "backend": backend,
        "file": path.name,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "gate_passed": bool(passed),
    }


def write_report(out: Path, report: dict[str, Any]) -> Path:
    path = out / REPORT_NAME
    write_json(path, report, sort_keys=False)
    return path


def read_report(out: Path) -> dict[str, Any]:
    return json.loads((Path(out) / REPORT_NAME).read_text(encoding="utf-8"))

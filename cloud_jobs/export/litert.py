"""LiteRT (.tflite) step graph via litert-torch, with the contract's tensor names.

The graph is converted with named keyword inputs and a dict output, so the .tflite's
``serving_default`` signature reads ``image, state, memory -> action, state_out,
memory_out`` exactly like the ONNX contract, and a ``continuon`` metadata entry (JSON:
version, action names, model config) is written into the flatbuffer, where the runtime
(:mod:`brain.policy.litert_model`) reads it.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from brain.policy.litert_model import METADATA_NAME
from common.durable import replace_file


def _named_graph(policy: Any) -> Any:
    from torch import nn

    class StepGraph(nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.policy = p

        def forward(self, image, state, memory):
            action, state_out, memory_out = self.policy.step(image, state, memory)
            return {"action": action, "state_out": state_out, "memory_out": memory_out}

    return StepGraph(policy).eval()


def embed_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Add (or replace) our JSON metadata entry in a .tflite flatbuffer, atomically."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    keep = [
        m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())
    ]
    model.metadata = [*keep, entry]
    builder = flatbuffers.Builder(max(1024, path.stat().st_size + 4096))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    replace_file(path, bytes(builder.Output()))


def export_litert(
    policy: Any, path: Path, metadata: dict[str, Any], *, quiet: bool = True
) -> dict[str, Any]:
    """Convert ``policy.step`` (batch 1) to ``path``; returns the signature it has."""
    import litert_torch
    import torch

    cfg = policy.config
    if cfg.depth:
        raise ValueError("depth models have no step-graph contract yet (only `image` input)")
    was_training = policy.training
    policy.eval()
    h, w = cfg.image_hw
    state, memory = policy.initial_state(1, device="cpu")
    kwargs = {"image": torch.zeros(1, h, w, 3, dtype=torch.uint8), "state": state, "memory": memory}
    sink = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if quiet:  # litert-torch prints a progress tree on stdout/stderr
                stack.enter_context(contextlib.redirect_stdout(sink))
                stack.enter_context(contextlib.redirect_stderr(sink))
            edge = litert_torch.convert(_named_graph(policy), sample_args=(), sample_kwargs=kwargs)
            edge.export(str(path))
    finally:
        policy.train(was_training)
    embed_metadata(path, metadata)
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(path)).get_signature_list()
    return {
        "signatures": {k: {"inputs": v["inputs"], "outputs": v["outputs"]} for k, v in sig.items()}
    }

"""Export ``Policy.step`` as an ONNX step graph that follows ``docs/policy-contract.md``.

Inputs ``image`` uint8 [1, H, W, 3], ``state`` float32 [1, S], ``memory`` float32 [1, M];
outputs ``action`` [1, A], ``state_out``, ``memory_out``.  Needs the ``onnx`` package (dev /
cloud extra) for the metadata; the robot only needs onnxruntime to run the result.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import torch
from torch import Tensor, nn

from .policy import Policy

ONNX_OPSET = 18
INPUT_NAMES = ("image", "state", "memory")
OUTPUT_NAMES = ("action", "state_out", "memory_out")


def fuse_batchnorm(policy: Policy) -> Policy:
    """A copy of ``policy`` (eval mode) with every encoder BatchNorm folded into its conv.

    torch's exporter folds Conv+BatchNorm itself only where the conv weight is a plain
    parameter; the first conv's weight is ``weight * in_scale`` (the folded input scale), so
    its BatchNorm would stay in the file as a separate op.  Folding here leaves plain Convs.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(policy).eval()
    layers = list(fused.encoder.convs)
    for i in range(len(layers) - 1):
        conv, bn = layers[i], layers[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            layers[i], layers[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    fused.encoder.convs = nn.Sequential(*layers)
    return fused


class _StepGraph(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, image: Tensor, state: Tensor, memory: Tensor) -> tuple[Tensor, ...]:
        return self.policy.step(image, state, memory)


def export_onnx(
    policy: Policy,
    path: str | os.PathLike[str],
    *,
    version: str | None = None,
    opset: int = ONNX_OPSET,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write ``policy.step`` (batch 1, fixed shapes) to ``path``; returns the path.

    Metadata: ``action_names`` (from the config), ``version`` (if given), ``model_config``
    (JSON), plus ``metadata``.  The memorize knobs (``set_memorize``) are baked in as constants.
    A depth model cannot be exported: the contract has no depth input yet.
    """
    cfg = policy.config
    if cfg.depth:
        raise ValueError("depth models have no ONNX step-graph contract yet (only `image` input)")
    path = os.fspath(path)
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    h, w = cfg.image_hw
    image = torch.zeros(1, h, w, 3, dtype=torch.uint8, device=device)
    state, memory = policy.initial_state(1, device=device)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _StepGraph(fuse_batchnorm(policy)),
                (image, state, memory),
                path,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        policy.train(was_training)

    import onnx  # dev/cloud extra; only needed here

    model = onnx.load(path)
    props = {"model_config": json.dumps(cfg.to_dict(), sort_keys=True)}
    if cfg.action_names is not None:
        props["action_names"] = ",".join(cfg.action_names)
    if version is not None:
        props["version"] = version
    props.update(metadata or {})
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, path)
    return path

"""Image (+ optional depth) -> feature vector: in-graph normalisation and a small conv net."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cms import activation_module
from .config import ModelConfig

# Per-channel RGB statistics (the common ImageNet values; any fixed constants would do, the
# point is that they live inside the graph so the runtime feeds raw uint8 pixels).
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def input_scale(cfg: ModelConfig) -> Tensor:
    """Per-channel factor the first conv folds in (``input_norm="folded"``): [1, C, 1, 1]."""
    scale = [1.0 / (255.0 * s) for s in RGB_STD] + ([1.0] if cfg.depth else [])
    return torch.tensor(scale).view(1, len(scale), 1, 1)


def normalisation_info(cfg: ModelConfig) -> dict[str, object]:
    """What the graph does to raw pixels, for the mobile metadata (feed raw uint8 either way)."""
    if cfg.input_norm == "folded":
        return {
            "formula": "x = pixel / (255 * std) per channel, folded into the first convolution",
            "mean": None,
            "std": list(RGB_STD),
        }
    return {
        "formula": "x = (pixel / 255 - mean) / std per channel",
        "mean": list(RGB_MEAN),
        "std": list(RGB_STD),
    }


class InputNormalizer(nn.Module):
    """uint8 NHWC RGB (+ uint16 depth in mm) -> float32 NCHW.

    With ``input_norm="folded"`` RGB stays in 0..255 here: the per-channel 1/(255*std) lives
    in the first conv's weights (:class:`ScaledInputConv2d`), which is exact -- zero padding
    stays zero -- and leaves no elementwise op on the full-resolution image at run time.
    The mean is not subtracted: the conv bias / BatchNorm after it absorb any offset.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.folded = cfg.input_norm == "folded"
        self.depth = cfg.depth
        self.depth_max_m = float(cfg.depth_max_m)
        std = torch.tensor(RGB_STD)
        self.scale: Tensor
        self.shift: Tensor
        # (x / 255 - mean) / std == x * scale + shift: one Mul and one Add in the graph.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "shift", (-torch.tensor(RGB_MEAN) / std).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, image: Tensor, depth: Tensor | None = None) -> Tensor:
        if image.dim() != 4 or image.shape[-1] != 3:
            raise ValueError(f"image must be [N, H, W, 3] uint8 RGB, got {tuple(image.shape)}")
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        if not self.folded:
            x = x * self.scale + self.shift
        if not self.depth:
            return x
        if depth is None:
            raise ValueError("this model was built with depth=True: pass a depth image")
        if depth.dim() == 4:
            depth = depth.squeeze(-1)
        # uint16 millimetres -> metres clipped to [0, max] -> [-1, 1]
        m = depth.to(torch.float32) * 0.001
        m = torch.clamp(m, 0.0, self.depth_max_m) * (2.0 / self.depth_max_m) - 1.0
        return torch.cat([x, m.unsqueeze(1)], dim=1)


class ScaledInputConv2d(nn.Conv2d):
    """A conv whose input channels are scaled by a fixed factor folded into its weights.

    ``conv(x * s) == conv_{w*s}(x)``; written as the weight product so the ONNX export's
    constant folding leaves one plain Conv reading the raw pixels.
    """

    def __init__(self, *args: object, in_scale: Tensor, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.in_scale: Tensor
        self.register_buffer("in_scale", in_scale.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self._conv_forward(x, self.weight * self.in_scale, self.bias)
        return out


def _norm(cfg: ModelConfig, channels: int) -> nn.Module | None:
    if cfg.enc_norm == "batch":
        return nn.BatchNorm2d(channels)
    if cfg.enc_norm == "group" and cfg.enc_groups:
        return nn.GroupNorm(min(cfg.enc_groups, channels), channels)
    return None


def _conv_out(size: int, kernel: int, stride: int) -> int:
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


class ConvEncoder(nn.Module):
    """Strided conv stack -> [spatial-softmax keypoints, global average] -> Linear -> LayerNorm.

    Spatial-softmax keypoints (expected x/y of K learned feature maps) keep *where* things are
    (lane edges, obstacles), which global pooling throws away and steering needs; the global
    average keeps *what* is seen.  Both are cheap.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        in_ch = 4 if cfg.depth else 3
        layers: list[nn.Module] = []
        h, w = cfg.image_hw
        for i, (out_ch, k, s) in enumerate(
            zip(cfg.enc_channels, cfg.enc_kernels, cfg.enc_strides, strict=True)
        ):
            norm = _norm(cfg, out_ch)
            conv_args = (in_ch, out_ch, k)
            # BatchNorm's shift makes a conv bias redundant; GroupNorm models kept theirs.
            conv_kw: dict[str, Any] = {
                "stride": s,
                "padding": k // 2,
                "bias": cfg.enc_norm != "batch",
            }
            if i == 0 and cfg.input_norm == "folded":
                layers.append(ScaledInputConv2d(*conv_args, in_scale=input_scale(cfg), **conv_kw))
            else:
                layers.append(nn.Conv2d(*conv_args, **conv_kw))
            if norm is not None:
                layers.append(norm)
            layers.append(activation_module(cfg.activation))
            in_ch = out_ch
            h, w = _conv_out(h, k, s), _conv_out(w, k, s)
        self.convs = nn.Sequential(*layers)
        self.grid_hw = (h, w)
        self.keypoints = cfg.keypoints
        feat_in = in_ch
        if cfg.keypoints:
            self.kp_logits = nn.Conv2d(in_ch, cfg.keypoints, 1)
            ys = torch.linspace(-1.0, 1.0, h).view(h, 1).expand(h, w).reshape(-1)
            xs = torch.linspace(-1.0, 1.0, w).view(1, w).expand(h, w).reshape(-1)
            self.pos: Tensor
            self.register_buffer("pos", torch.stack([xs, ys], dim=1), persistent=False)  # [HW,2]
            feat_in += 2 * cfg.keypoints
        self.proj = nn.Linear(feat_in, cfg.feature_dim)
        self.norm = nn.LayerNorm(cfg.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        features: Tensor = self.norm(self.proj(self.pooled(x)))
        return features

    def pooled(self, x: Tensor) -> Tensor:
        """The conv trunk's pooled features, before ``proj``: [N, C (+ 2K)].

        Split out so a fine-tune that freezes the convs (brain.localtrain) can compute
        them once per frame and train only what comes after.
        """
        f = self.convs(x)  # [N, C, h, w]
        n = f.shape[0]
        parts = [f.mean(dim=(2, 3))]
        if self.keypoints:
            logits = self.kp_logits(f).flatten(2)  # [N, K, hw]
            attn = F.softmax(logits, dim=-1)
            kp = torch.matmul(attn, self.pos)  # [N, K, 2]
            parts.append(kp.reshape(n, 2 * self.keypoints))
        return torch.cat(parts, dim=1)

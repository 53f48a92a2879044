"""The in-graph half of preprocessing: `Preprocess`, the nn.Module every model runs first.

The host half (decode, colour conversion, registration, resize to the model's size, giving uint8
[H, W, C]) is torch-free and lives in core.images / core.prepare, so the edge runtime needs no
PyTorch. Everything numeric (cast, scale, normalize, layout) is here, inside the model, and the
exported graph contains it, so training-time and exported scores cannot drift.
"""
from __future__ import annotations

import torch
from torch import nn


class Preprocess(nn.Module):
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [0, 1] (the reconstruction target) and the
    normalized encoder input. Lives inside the model so export carries it into the graph."""

    def __init__(self, channels: int, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), float(mean)))
        self.register_buffer("std", torch.full((1, channels, 1, 1), float(std)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cast before the transpose: TensorRT accepts uint8 only as an input to a Cast
        x01 = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        return x01, self.normalize(x01)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """The encoder input from an image in [0, 1], e.g. a reconstruction fed back to the encoder."""
        return (x01 - self.mean) / self.std

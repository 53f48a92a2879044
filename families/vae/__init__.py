"""The vae family: the paper's one-class VAE ("Towards Visually Explaining Variational
Autoencoders", Liu et al., CVPR 2020). Its code is the training and export layers themselves
(training/models, training/attention, export/graph): this folder says how retraining builds it
(train -> export -> parity check) and what it costs."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from families.family import BuildRequest, Family

# training.train's per-image cost at 128 px on 2 cores (docs/benchmarks.md: 150 epochs of the 320
# screws in ~22 min), scaled by the pixel count
SECONDS_PER_IMAGE_EPOCH = 0.0275


def build_model(req: BuildRequest) -> Path:
    train_args = ["--config", str(req.config), "--out", str(req.stage / "train"), *req.overrides]
    if req.init is not None:
        train_args += ["--init", str(req.init)]
    req.run("train", "training.train", train_args, epochs=True)  # a bar, or a line every few minutes
    ckpt = req.stage / "model.pt"
    (req.stage / "train" / "model.pt").rename(ckpt)
    shutil.rmtree(req.stage / "train")
    req.run("export", "export.onnx", ["--checkpoint", str(ckpt), "--out", str(req.model)])
    req.run("check", "export.check", ["--onnx", str(req.model), "--checkpoint", str(ckpt)])
    return req.model


def minutes(config: dict[str, Any], images: int) -> float:
    model, train = config.get("model") or {}, config.get("train") or {}
    size = int(model.get("size", 256))
    return int(train.get("epochs", 1)) * images * SECONDS_PER_IMAGE_EPOCH * (size / 128) ** 2 / 60


FAMILY = Family("vae", "the paper's one-class VAE: blurred reconstruction error, latent attention to explain",
                trains=True, build=f"{__name__}:build_model", minutes=f"{__name__}:minutes", warm_start=True,
                archs=("resnet18", "mnist", "ucsd", "factorvae"))

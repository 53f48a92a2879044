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


def new_part(size: int, channels: int, registration: dict[str, str]) -> dict[str, Any]:
    """configs/screw.yaml's settings (the shipped VAE: docs/benchmarks.md chose them on screws) for
    another part: its size, channels and registration."""
    return {"model": {"arch": "resnet18", "size": size, "channels": channels, "latent": 32, "fc_relu": False},
            "registration": dict(registration),
            "data": {"augment": {"rotate": 3 if registration.get("method") != "none" else 0, "hflip": False,
                                 "vflip": False}},
            "train": {"epochs": 150, "batch_size": 16, "lr": 5.0e-4, "lr_decay": 0.5, "loss": "mse", "beta": 0.025,
                      "seed": 0},
            "inference": {"layer": "layer3", "score": "sum_mu", "anomaly_map": "recon_error_blur", "blur_sigma": 2.0}}


FAMILY = Family("vae", "the paper's one-class VAE: blurred reconstruction error, latent attention to explain",
                trains=True, build=f"{__name__}:build_model", minutes=f"{__name__}:minutes",
                config=f"{__name__}:new_part", warm_start=True, rank=1,
                archs=("resnet18", "mnist", "ucsd", "factorvae"))

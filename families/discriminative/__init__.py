"""The discriminative family: a small segmentation net that compares a registered part with its
nearest good parts (the template's references) and marks what differs in a way good parts never
do. It learns from synthetic defects pasted on the good parts (no defective part needed): the idea
behind DRAEM (Zavrtanik et al., ICCV 2021), with the reference bank in the role of DRAEM's
reconstruction, so the net has a real good part to compare with instead of a reconstruction that
may have copied the defect.

    synth.py    synthetic defects (numpy; also what the automatic set-up scores settings on)
    net.py      DefectMap: normalization, U-Net, sigmoid, blur (the exported module)
    train.py    python -m families.discriminative.train: bank + training -> model.pt
    export.py   python -m families.discriminative.export: model.pt -> X.onnx (the template's reference
                subgraph + the net), checked against PyTorch on the bank's parts and noise; with
                model.blend the net's map plus the template's (the variant `blend`: one training,
                two exports, so the set-up measures both)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from families.family import BuildRequest, Family

STEP_SECONDS = 0.4      # one training step at 128 px, width 16, batch 8 on 2 cores: 0.36 s measured alone
                        # (metal_nut, colour); 2.6-3.4 s beside another tenant's training, where the set-up's
                        # deadline keeps the budget
EXPORT_MINUTES = 0.5


def build_model(req: BuildRequest) -> Path:
    req.run("train", "families.discriminative.train",
            ["--config", str(req.config), "--out", str(req.stage / "train"), *req.overrides], epochs=True)
    ckpt = req.stage / "model.pt"
    (req.stage / "train" / "model.pt").rename(ckpt)
    (req.stage / "train").rmdir()
    req.run("export", "families.discriminative.export", ["--checkpoint", str(ckpt), "--out", str(req.model)])
    return req.model


def blend(req: BuildRequest, built: Path) -> Path:
    """The model built at `built` exported again with the template's map blended in (net.Blended):
    its checkpoint is copied beside the new graph, which the deployment keeps with it."""
    shutil.copy2(built.parent / "model.pt", req.stage / "model.pt")
    req.run("export", "families.discriminative.export", ["--checkpoint", str(req.stage / "model.pt"),
                                                         "--out", str(req.model), "--blend", "on"])
    return req.model


def minutes(config: dict[str, Any], images: int) -> float:
    from families.discriminative.train import settings  # noqa: PLC0415 - the defaults live with the trainer

    cfg = settings(config)
    m, t = cfg["model"], cfg["train"]
    step = STEP_SECONDS * (m["size"] / 128) ** 2 * (m["width"] / 16) ** 2 * t["batch_size"] / 8 * (m["channels"] + 2) / 5
    return t["steps"] * step / 60 + EXPORT_MINUTES


def new_part(size: int, channels: int, registration: dict[str, str]) -> dict[str, Any]:
    from families.discriminative.train import DEFAULTS  # noqa: PLC0415

    return {"model": {**DEFAULTS["model"], "size": size, "channels": channels}, "registration": dict(registration),
            "train": dict(DEFAULTS["train"])}


FAMILY = Family("discriminative", "a net that compares the part with its nearest good parts, learned on synthetic "
                "defects", trains=True, build=f"{__name__}:build_model", minutes=f"{__name__}:minutes",
                config=f"{__name__}:new_part", variants={"blend": f"{__name__}:blend"})

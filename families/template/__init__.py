"""The template family: the registered good parts kept as a reference bank; a part's map is, per
pixel, the least difference to its nearest references, blurred. Training-free (seconds), and the
map explains itself: it is a difference to real good parts.

    bank.py     TemplateBank: the numpy map, the reference implementation (torch-free)
    graph.py    the same map as an ONNX graph with the bank inside, checked against the bank
    build.py    python -m families.template.build: fit, register, bank, graph, sidecar
    backend.py  the runtime backend that opens a bank (.npz) without a graph
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from families.family import BuildRequest, Family

SECONDS_PER_IMAGE = 0.03   # read + register + bank, measured on the shared screw / metal_nut sets


def build_model(req: BuildRequest) -> Path:
    # the bank as an ONNX graph (checked against the numpy bank before it is written) beside X.npz
    req.run("train", "families.template.build", ["--config", str(req.config), "--out", str(req.model)])
    req.notes.append("template model: a reference bank, no training (--init does not apply)")
    return req.model


def minutes(config: dict[str, Any], images: int) -> float:
    size = int((config.get("model") or {}).get("size", 256))
    return (10 + images * SECONDS_PER_IMAGE * (size / 256) ** 2) / 60


def new_part(size: int, channels: int, registration: dict[str, str]) -> dict[str, Any]:
    return {"model": {"family": "template", "size": size, "channels": channels, "k": 5, "tolerance": 0},
            "registration": dict(registration)}


FAMILY = Family("template", "the nearest registered good parts, per pixel the least difference (no training)",
                trains=False, build=f"{__name__}:build_model", minutes=f"{__name__}:minutes",
                config=f"{__name__}:new_part", archs=("template",),
                backends={".npz": ("template", "families.template.backend:TemplateBackend")})

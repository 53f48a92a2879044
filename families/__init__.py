"""Model families: one folder each, saying how a part's model is built, exported and opened.

| family         | builds                                                           | trains |
|----------------|------------------------------------------------------------------|--------|
| vae            | the paper's one-class VAE (training/, export/): attention + maps | yes    |
| template       | a bank of registered good parts; per pixel the least difference  | no     |
|                | to the nearest ones                                              |        |
| discriminative | a small segmentation net that compares a part with its nearest   | yes    |
|                | good parts, learned on synthetic defects pasted on good ones     |        |

Every family exports an ONNX graph under the same contract, so ONNX Runtime, TensorRT, the
camera and calibration run it unchanged. A family is a sub-package whose `__init__` defines
FAMILY (families.family.Family); this table is discovered from the folders, so adding a family
touches its own folder only, and every command line takes its choices from FAMILIES.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from families.family import BuildRequest, Family

__all__ = ["FAMILIES", "BuildRequest", "Family", "family_of"]


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
            if isinstance(family, Family):
                found[family.name] = family
    return dict(sorted(found.items()))


FAMILIES: dict[str, Family] = _discover()
DEFAULT_ARCH = "resnet18"   # training's default model.arch: a config without one trains the VAE


def family_of(config: dict[str, Any]) -> Family:
    """The family a config builds: model.family, else the family whose archs hold model.arch.
    ValueError for a name or arch no family knows."""
    model = config.get("model") or {}
    name = model.get("family")
    if name is not None:
        if name not in FAMILIES:
            raise ValueError(f"model.family: '{name}' is not one of {', '.join(FAMILIES)}")
        return FAMILIES[name]
    arch = model.get("arch", DEFAULT_ARCH)
    for family in FAMILIES.values():
        if arch in family.archs:
            return family
    known = sorted(a for f in FAMILIES.values() for a in f.archs)
    raise ValueError(f"model.arch: '{arch}' is not one of {', '.join(known)} (or name model.family)")

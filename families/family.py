"""What a model family declares: how a part's model is built (trained or not) into an exported
graph under the one contract (input `image` uint8 [N, H, W, C], output `anomaly_map` [N, 1, H, W]),
and which runtime backends open its files besides ONNX Runtime and TensorRT. Torch-free: the
runtime reads these declarations; a family's build code is imported only when it builds."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuildRequest:
    """What training.retrain asks a family to build inside a staging folder.

    config: the config file (written into the stage); model: the ONNX file to produce (its sidecar
    beside it); init: a checkpoint to warm-start from (families that train), or None; overrides:
    command-line flags for the training step (--epochs, --max-steps, --device); run(name, module,
    args): runs one step as the project's own command (core.steps.run_step); notes: lines the
    family adds to the deployment's manifest."""
    config: Path
    model: Path
    init: Path | None
    overrides: list[str]
    run: Callable[..., None]
    notes: list[str] = field(default_factory=list)

    @property
    def stage(self) -> Path:
        return self.model.parent


@dataclass(frozen=True)
class Family:
    """name: model.family in configs and sidecars; summary: one line for tables; trains: building
    it trains a network (minutes to an hour) rather than building a bank (seconds); archs: the
    model.arch values of configs written before families existed that mean this family;
    build: "module:function" taking a BuildRequest and returning the model file it wrote;
    backends: extension -> (backend name, "module:Class") for files the runtime opens without a
    graph (a template's .npz bank); minutes: "module:function"(config, images) -> estimated build
    minutes on a 2-core CPU, for the automatic set-up's budget; config: "module:function"(size,
    channels, registration) -> the family's config for a new part (the automatic set-up's
    candidate); warm_start: retraining may start from the deployed version's checkpoint (--init);
    rank: the order the automatic set-up tries the trained families in, lowest first (where the
    budget holds one, the one that measured best in bench.parts; docs/benchmarks.md, "Every part");
    variants: model options an already built model can be exported with again, without a rebuild,
    option -> "module:function"(req, built) -> the model file (req.config sets the option; built:
    the model file of the same setting without it): the set-up and bench.parts measure both."""
    name: str
    summary: str
    trains: bool
    build: str
    minutes: str
    config: str
    warm_start: bool = False
    rank: int = 0
    archs: tuple[str, ...] = ()
    backends: dict[str, tuple[str, str]] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)

    def builder(self) -> Callable[[BuildRequest], Path]:
        return _resolve(self.build)

    def variant(self, option: str) -> Callable[[BuildRequest, Path], Path]:
        return _resolve(self.variants[option])

    def estimate(self, config: dict[str, Any], images: int) -> float:
        return float(_resolve(self.minutes)(config, images))

    def new_part(self, size: int, channels: int, registration: dict[str, str]) -> dict[str, Any]:
        return dict(_resolve(self.config)(size, channels, registration))


def _resolve(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)

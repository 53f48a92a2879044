"""Backends: one interface over ONNX Runtime, TensorRT and PyTorch.

A backend takes uint8 images [N, H, W, C] at the model's size and returns the exported graph's
named outputs as numpy arrays (docs/architecture.md, "The exported graph's contract"). Host-side
work beyond that (decode, colour, registration, resize) belongs to core.prepare; everything
numeric is in the graph, so every backend computes the same function. A model family may add a
backend for files it opens without a graph (the template family's .npz reference bank): the table
below takes them from the families' declarations (families.FAMILIES).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from core.backend import Backend, BackendError, BackendUnavailable, inference_failed
from families import FAMILIES

__all__ = ["BACKENDS", "EXTENSIONS", "Backend", "BackendError", "BackendUnavailable", "backend_for", "create",
           "inference_failed"]

# backend name -> "module:Class"; families add theirs
_CLASSES: dict[str, str] = {
    "onnxruntime": "runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "runtime.backends.tensorrt:TensorRTBackend",
    "torch": "runtime.backends.torch:TorchBackend",
    **{name: target for f in FAMILIES.values() for name, target in f.backends.values()},
}
# Extension -> backend name; `--backend` overrides it (runtime.model.open_model).
EXTENSIONS: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".trt": "tensorrt", ".engine": "tensorrt", ".plan": "tensorrt",
    ".pt": "torch", ".pth": "torch",
    **{ext: name for f in FAMILIES.values() for ext, (name, _) in f.backends.items()},
}
BACKENDS: tuple[str, ...] = tuple(_CLASSES)


def backend_for(path: str | Path) -> str | None:
    """The backend an extension implies, or None for an unknown extension."""
    return EXTENSIONS.get(Path(path).suffix.lower())


def create(name: str, path: str | Path, **options: object) -> Backend:
    """Instantiate a backend by name; its library is imported only here (lazily)."""
    if name == "onnxruntime":
        from runtime.backends.onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path, providers=options.get("providers"),  # type: ignore[arg-type]
                                  threads=options.get("threads"), spin=bool(options.get("spin")),  # type: ignore[arg-type]
                                  device=options.get("device"))  # type: ignore[arg-type]
    if name == "tensorrt":
        from runtime.backends.tensorrt import TensorRTBackend
        return TensorRTBackend(path, device=options.get("device"))  # type: ignore[arg-type]
    if name == "torch":
        from runtime.backends.torch import TorchBackend
        return TorchBackend(path, device=options.get("device"),  # type: ignore[arg-type]
                            settings=options.get("settings"))  # type: ignore[arg-type]
    if name in _CLASSES:  # a family's backend: it takes the file alone
        module, cls = _CLASSES[name].split(":")
        return getattr(importlib.import_module(module), cls)(path)
    raise ValueError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")

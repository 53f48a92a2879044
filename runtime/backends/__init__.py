"""Backends: one interface over ONNX Runtime, TensorRT and PyTorch.

A backend takes uint8 images [N, H, W, C] at the model's size and returns the exported graph's
named outputs as numpy arrays (docs/architecture.md, "The exported graph's contract"). Host-side
work beyond that (decode, colour, registration, resize) belongs to core.prepare; everything
numeric is in the graph, so every backend computes the same function. The `template` backend runs
a reference bank (export.template) instead of a graph, with the same interface.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

# Extension -> backend name; `--backend` overrides it (runtime.model.open_model).
EXTENSIONS: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".trt": "tensorrt", ".engine": "tensorrt", ".plan": "tensorrt",
    ".pt": "torch", ".pth": "torch",
    ".npz": "template",
}
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch", "template")


class BackendError(RuntimeError):
    """A backend failed to load or run a model. Each backend turns its library's own exception
    types (ONNX Runtime's are not even RuntimeErrors) into this one at its boundary, with one line
    naming the model file, so callers handle one type."""


class BackendUnavailable(BackendError):
    """The backend's library or hardware is missing; the message is one actionable line."""


def inference_failed(path: str | Path, error: BaseException) -> BackendError:
    """The BackendError for a failed run of `path`: the library's first message line, bounded."""
    text = str(error).strip()
    detail = text.splitlines()[0][:300] if text else ""
    return BackendError(f"{path}: inference failed ({error.__class__.__name__}{': ' + detail if detail else ''})")


class Backend(Protocol):
    name: str
    input_name: str
    output_names: tuple[str, ...]
    max_batch: int | None  # None: any batch size
    input_shape: tuple  # (H, W, C) the model itself declares

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, C] -> {output name: array with leading dim N}."""
        ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, object]:
        """What ran (provider, device, precision) for reports and benchmarks."""
        ...


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
    if name == "template":
        from runtime.backends.template import TemplateBackend
        return TemplateBackend(path)
    if name == "torch":
        from runtime.backends.torch import TorchBackend
        return TorchBackend(path, device=options.get("device"),  # type: ignore[arg-type]
                            settings=options.get("settings"))  # type: ignore[arg-type]
    raise ValueError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")

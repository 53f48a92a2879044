"""The backend interface every runtime backend implements (ONNX Runtime, TensorRT, PyTorch, and
the backends a model family adds for files without a graph), and its errors. In core so that a
family's backend (families/) and the runtime's (runtime/backends/) share it without importing
each other."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


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

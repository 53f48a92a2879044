"""ONNX Runtime backend for `.onnx` models: a core.ort session (the project's one way to build
one: providers, device, threads, no spin-waiting) behind the backend interface."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core import ort
from runtime.backends import BackendError, BackendUnavailable, inference_failed


class OnnxRuntimeBackend:
    name = "onnxruntime"
    selects_outputs = True  # run() fetches only the outputs asked for (runtime.model.Model.run)

    def __init__(self, path: str | Path, providers: Sequence[str] | str | None = None,
                 threads: int | None = None, spin: bool = False, device: str | None = None) -> None:
        self.path = Path(path)
        try:
            self.session = ort.session(self.path, providers, device, threads, spin)
        except ort.OrtError as e:
            loaded = "cannot load the model" in str(e)  # a bad file, not a missing provider or GPU
            raise (BackendError if loaded else BackendUnavailable)(str(e)) from e
        import onnxruntime  # noqa: PLC0415 - loaded by the session above

        self.errors = ort.ort_errors()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input 'image', found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        batch = inputs[0].shape[0]
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.input_shape = tuple(inputs[0].shape[1:])  # (H, W, C) as the graph declares them
        self.providers = self.session.get_providers()
        self.version = onnxruntime.__version__
        self.threads = threads

    def run(self, image: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, C] -> {name: array} for `outputs` (default: every output of the graph)."""
        n = len(image)
        names = list(outputs) if outputs is not None else list(self.output_names)
        if self.max_batch is not None and n < self.max_batch:
            # a graph exported with a fixed batch takes exactly that many images (a folder's last
            # batch is usually short): pad with copies of the last image and drop their outputs
            image = np.concatenate([image, np.repeat(image[-1:], self.max_batch - n, axis=0)])
        try:
            outs = self.session.run(names, {self.input_name: np.ascontiguousarray(image)})
        except self.errors as e:
            raise inference_failed(self.path, e) from e
        return {name: out[:n] for name, out in zip(names, outs)}

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "providers": list(self.providers), "threads": self.threads,
                "onnxruntime": self.version}

"""TensorRT 10 backend for serialized engines (`.trt`, `.engine`, `.plan`): core.tensorrt.Engine
(the project's one engine runner, torch-free: CUDA memory from cuda-python) behind the backend
interface, with its failures as BackendUnavailable / BackendError lines naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.device import parse_device
from core.tensorrt import Engine, TensorRTError
from runtime.backends import BackendError, BackendUnavailable, inference_failed


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        self.path = Path(path)
        dev = parse_device(device)
        if dev.kind == "cpu":
            raise BackendUnavailable(f"TensorRT runs on a CUDA GPU, not '--device {device}'; run the .onnx model "
                                     "with --backend onnxruntime instead")
        try:
            self.engine = Engine(self.path, dev.gpu)
        except TensorRTError as e:
            # a missing package or GPU is 'unavailable' (the fix is an install); a bad file is an error
            bad_file = str(e).startswith(str(self.path))
            raise (BackendError if bad_file else BackendUnavailable)(str(e)) from None
        self.input_name = self.engine.input_name
        self.input_shape = self.engine.input_shape
        self.output_names = self.engine.output_names
        self.max_batch = self.engine.max_batch

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return self.engine.run(image)
        except RuntimeError as e:  # the runner's and CUDA's (copies, out of memory)
            raise inference_failed(self.path, e) from e

    def close(self) -> None:
        self.engine.close()

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "device": self.engine.memory.device_name,
                "tensorrt": self.engine.version, "max_batch": self.max_batch}

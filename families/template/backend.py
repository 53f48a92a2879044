"""Template backend for `.npz` reference banks (families.template.build): the training-free map
(core.template) behind the backend interface, so inspection, calibration and the camera run a
template model exactly as they run an exported VAE. Output: anomaly_map only (no attention)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from families.template.bank import TemplateBank
from core.backend import BackendError, inference_failed


class TemplateBackend:
    name = "template"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.bank = TemplateBank.load(self.path)
        except ValueError as e:
            raise BackendError(str(e)) from e
        self.input_name = "image"
        self.output_names = ("anomaly_map",)
        self.max_batch = None
        self.input_shape = tuple(int(d) for d in self.bank.images.shape[1:])  # (H, W, C)

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return {"anomaly_map": self.bank.anomaly_map(image)}
        except (ValueError, MemoryError) as e:
            raise inference_failed(self.path, e) from e

    def close(self) -> None:
        self.bank = None  # type: ignore[assignment]

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "bank_images": len(self.bank.images), "k": self.bank.k,
                "sigma": self.bank.sigma}

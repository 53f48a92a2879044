"""Inference runtime: open an exported model by path (runtime.model.open_model), turn its
anomaly_map into verdicts, masks and boxes (runtime.postprocess), draw overlays (runtime.overlay)
and inspect folders (python -m runtime.inspect). See docs/architecture.md, "Runtime"."""
from runtime.model import InputSpec, Model, ModelError, open_model
from runtime.postprocess import Inspection, Thresholds, inspect_map

__all__ = ["InputSpec", "Inspection", "Model", "ModelError", "Thresholds", "inspect_map", "open_model"]

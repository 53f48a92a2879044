"""Run exported models on images: open by path (any backend), one pipeline for every consumer
(batch inspection, camera, calibration), verdicts, masks and overlays. Torch-free with the ONNX
Runtime and TensorRT backends."""
from runtime.model import Model, ModelError, open_model
from runtime.pipeline import Pipeline, Result
from runtime.postprocess import Inspection, Thresholds, inspect_map

__all__ = ["Inspection", "Model", "ModelError", "Pipeline", "Result", "Thresholds", "inspect_map", "open_model"]

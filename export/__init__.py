"""Export: the explicit-backward graph (graph.py), ONNX export (onnx.py), parity check (check.py),
TensorRT engine build (tensorrt.py) and the sidecar shared by all of them (sidecar.py)."""

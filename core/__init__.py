"""The torch-free core every layer imports: files, images, sidecars, metrics, engines' plumbing.

It imports nothing of training/, export/, runtime/ or calibration/ and never imports torch, so an
edge box with only ONNX Runtime (or TensorRT) runs inspection, calibration and the camera
(tests/test_torch_free.py proves it with torch made unimportable).
"""

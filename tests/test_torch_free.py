"""The edge runtime runs without PyTorch: its modules import, and a folder is inspected, in a
process where `import torch` fails (an edge box with ONNX Runtime only)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from core.sidecar import write_sidecar
from test_runtime_models import make_stub_model
from torchless import run_without_torch

# what an edge box runs: inspection, calibration, the camera, the ONNX Runtime, TensorRT and template
# backends, building a template bank (families.template.build needs no PyTorch either), and every
# family's declaration (the runtime's backend table reads them)
RUNTIME_MODULES = ("core.files", "core.images", "core.prepare", "core.registration", "families",
                   "families.template.bank",
                   "core.sidecar", "core.metrics", "core.ort", "core.device", "core.tensorrt",
                   "runtime.model", "runtime.pipeline", "runtime.inspect", "runtime.overlay",
                   "runtime.postprocess", "runtime.backends.onnxruntime", "runtime.backends.tensorrt",
                   "families.template.backend", "families.template.build", "core.deployment", "calibration.calibrate",
                   "calibration.report", "runtime.camera", "runtime.live", "runtime.capture", "runtime.stream",
                   "runtime.recorder", "runtime.inference_thread", "runtime.reload")


def test_runtime_imports_and_inspects_without_torch(tmp_path: Path) -> None:
    stub = make_stub_model(tmp_path / "model")  # built here, where torch exists
    side = yaml.safe_load(stub.with_suffix(".yaml").read_text())
    stub.with_suffix(".yaml").unlink()
    write_sidecar(stub, {k: v for k, v in side.items() if k not in ("files", "schema")})  # a real, hashed sidecar
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        img = np.full((40, 40), 30, np.uint8)
        if i == 2:
            img[5:15, 5:15] = 255
        cv2.imwrite(str(inp / f"{i}.png"), img)
    result = run_without_torch(f"""
for name in {RUNTIME_MODULES!r}:
    importlib.import_module(name)
import runtime.inspect as ri
rc = ri.main(['--engine', {str(stub)!r}, '--input', {str(inp)!r}, '--output', {str(tmp_path / 'out')!r},
              '--save', 'overlay,mask', '--quiet'])
""")
    assert result == {"rc": 0, "torch": []}
    rows = [yaml.safe_load(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == ["OK", "OK", "NG"]
    assert (tmp_path / "out" / "overlay" / "2.jpg").exists() and (tmp_path / "out" / "mask" / "2.png").exists()

"""PyTorch backend for `.pt` checkpoints: runs the very module that export writes to ONNX
(export.graph.build_export_module), so it is the reference the other backends are compared with
and the fallback for GPUs without TensorRT.

On CUDA, each batch size seen is captured once into a CUDA graph (shapes are static except the
batch, so a replay launches the whole forward + explicit backward in one go); the eager module is
used on CPU, after a failed capture, and past `max_graphs` distinct batch sizes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.backends import BackendUnavailable, inference_failed
from training.loop import torch_device


def pick_device(device: str | None) -> torch.device:
    """training.loop.torch_device (the one --device -> torch.device), its error as BackendUnavailable."""
    try:
        return torch_device(device)
    except RuntimeError as e:
        raise BackendUnavailable(str(e)) from None


def _outputs(result: Any) -> dict[str, torch.Tensor]:
    """The export module returns a NamedTuple of output names; optional outputs may be None."""
    items = result._asdict().items() if hasattr(result, "_asdict") else dict(result).items()
    return {k: v for k, v in items if v is not None}


class TorchBackend:
    name = "torch"

    def __init__(self, path: str | Path, device: str | torch.device | None = None,
                 settings: dict[str, Any] | None = None, cuda_graphs: bool = True, max_graphs: int = 8) -> None:
        try:
            from export.graph import build_export_module
        except ImportError as e:
            raise BackendUnavailable("the PyTorch backend needs export.graph (the export module); "
                                     "it is missing from this installation") from e
        s = settings or {}
        self.path = Path(path)
        self.device = pick_device(device)
        module, self.settings = build_export_module(self.path, layer=s.get("layer"), score=s.get("score"),
                                                    per_dim=bool(s.get("per_dim", False)), recon=s.get("recon"),
                                                    map_location=self.device, outputs=s.get("outputs"))
        self.module = module.to(self.device).eval()
        self.input_name = "image"
        self.max_batch = None
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.max_graphs = max_graphs
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, dict[str, torch.Tensor]]] = {}
        h, w, c = self.input_shape
        # A dry run learns the output names (the optional ones depend on the settings) and warms up.
        self.output_names = tuple(self._eager(torch.zeros((1, h, w, c), dtype=torch.uint8,
                                                          device=self.device)).keys())

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Input height, width, channels of the export module (static, from the checkpoint)."""
        return int(self.module.height), int(self.module.width), int(self.module.channels)

    @property
    def input_spec(self) -> dict[str, Any]:
        """The input section a sidecar would have, plus the checkpoint's registration."""
        h, w, c = self.input_shape
        return {"height": h, "width": w, "channels": c, "registration": self.settings.get("registration")}

    def _eager(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # no_grad: the gradients are explicit ops in the export module, not autograd.
        with torch.no_grad():
            return _outputs(self.module(x))

    def _graph(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if n not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                return None
            try:
                static_in = torch.zeros_like(x)
                side = torch.cuda.Stream(device=self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, cuDNN choice)
                    for _ in range(2):
                        self._eager(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.no_grad(), torch.cuda.graph(graph):
                    static_out = _outputs(self.module(static_in))
                self._graphs[n] = (graph, static_in, static_out)
            except Exception as e:  # noqa: BLE001 - any capture failure: stay correct, run eager
                print(f"warning: CUDA graph capture failed at batch {n} ({str(e)[:200]}); running eager",
                      file=sys.stderr)
                self.use_graphs = False
                return None
        graph, static_in, static_out = self._graphs[n]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        try:
            x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
            out = self._graph(int(x.shape[0]), x) if self.use_graphs else None
            if out is None:
                out = self._eager(x)
            # .cpu() copies, so a later replay cannot overwrite what the caller holds.
            return {k: v.detach().float().cpu().numpy() if v.dtype != torch.float32 else v.detach().cpu().numpy()
                    for k, v in out.items()}
        except RuntimeError as e:  # torch's errors (CUDA, out of memory) are RuntimeErrors
            raise inference_failed(self.path, e) from e

    def close(self) -> None:
        self._graphs.clear()

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "device": str(self.device), "cuda_graphs": self.use_graphs,
                "torch": torch.__version__}

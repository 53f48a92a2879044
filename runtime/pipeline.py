"""One inference pipeline for every consumer: open -> prepare -> infer -> judge -> render.

Batch inspection (runtime.inspect: files, reports, threads), the camera (runtime.camera: frames,
sinks) and calibration (calibration.calibrate: ROC curves, thresholds) all run images through
this object, so a part gets the same score, verdict, mask and picture whichever of them looks at
it. Torch-free with the ONNX Runtime and TensorRT backends.

    with Pipeline.open("screw.onnx") as pipe:              # model + sidecar + thresholds + warm-up
        [r] = pipe("part.png")                              # a path, an array, or a list of them
        r.verdict, r.inspection.score, r.inspection.boxes  # OK / NG / NO VERDICT
        picture = pipe.render(r)                            # BGR overlay: map, mask, badge, legend

    p = pipe.prepare(frame, bgr=True)                       # or the steps one by one (camera)
    out = pipe.infer([p])[0]
    res = pipe.judge(p, out)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from core.cli import UsageError
from core.images import DEFAULT_MAX_PIXELS
from core.prepare import InputSpec, Prepared, load, prepare, prepare_frame
from core.sidecar import opencv_note
from runtime import overlay as ov
from runtime.model import Model, ModelError, open_model
from runtime.postprocess import Inspection, Thresholds, inspect_map

EXPLAIN = ("anomaly_map", "attention", "both")


class ExplainUnavailable(ModelError, UsageError):
    """--explain asks for a map the model does not output (a line graph): typed wrong, exit 2."""


@dataclass
class Result:
    """One image through the pipeline. `error`: why it has no inspection (registration failed)."""
    prepared: Prepared
    outputs: dict[str, np.ndarray] | None = None   # this image's outputs, batch dimension removed
    inspection: Inspection | None = None
    error: str | None = None

    @property
    def verdict(self) -> str | None:
        """OK, NG or NO VERDICT; None when the image could not be inspected."""
        return self.inspection.verdict if self.inspection is not None else None


@dataclass(frozen=True)
class Layer:
    """A map drawn in colour: its output name, its fixed colour range (None: per image) and what
    the range is, for the legend."""
    name: str
    range: tuple[float, float] | None
    note: str


def model_scale(model: Model, key: str) -> float | None:
    """A normal 99th percentile the model carries (`attention_scale`, `anomaly_scale`): from an
    exported model's sidecar, or a checkpoint's own export settings (the PyTorch backend)."""
    value = (((model.sidecar or {}).get("model") or {}).get(key)
             or (getattr(model.backend, "settings", None) or {}).get(key))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


class Pipeline:
    """A model with its thresholds and colour scales; see the module docstring."""

    def __init__(self, model: Model, thresholds: Thresholds, explain: str = "anomaly_map") -> None:
        if "anomaly_map" not in model.output_names:
            raise ModelError(f"{model.path}: the model has no 'anomaly_map' output (outputs: "
                             f"{list(model.output_names)}); re-export it with python -m export.onnx")
        if explain not in EXPLAIN:
            raise ValueError(f"explain {explain!r}: choose one of {', '.join(EXPLAIN)}")
        if explain != "anomaly_map" and "attention" not in model.output_names:
            raise ExplainUnavailable(f"{model.path}: --explain {explain} needs the model's 'attention' output, which "
                                     f"it does not have (outputs: {', '.join(model.output_names)}); use --explain "
                                     "anomaly_map, or a graph exported with --outputs anomaly_map,attention")
        self.model, self.thresholds, self.explain = model, thresholds, explain
        # the backend is asked for the attention only where a picture draws it
        self.fetch = ("anomaly_map",) + (("attention",) if explain != "anomaly_map" else ())
        self.layers = {"anomaly_map": self._anomaly_layer(), "attention": self._attention_layer()}

    @classmethod
    def open(cls, path: str | Path, backend: str | None = None, providers: str | list[str] | None = None,
             device: str | None = None, threads: int | None = None, pixel: float | None = None,
             image: float | None = None, explain: str = "anomaly_map", warmup: int = 1,
             verify: bool = True) -> "Pipeline":
        """Open a model, its thresholds and its colour scales, ready for the first part.

        Args:
            path: a model file (.onnx, .trt/.engine/.plan, .pt, .npz) or a deployment folder; the
                backend follows the extension unless `backend` names one (runtime.model.open_model).
            providers, device, threads: ONNX Runtime providers, auto/cpu/cuda/cuda:N, threads.
            pixel, image: thresholds that override the sidecar's (None: the sidecar's, if any).
            explain: what render() colours: anomaly_map (the map that decides), attention, both.
            warmup: zero images run once now, so lazy initialization (arenas, CUDA graphs) is not
                charged to the first part.
            verify: check the model's sha256 against its sidecar.
        Returns the Pipeline (a context manager: `with Pipeline.open(...) as pipe:` closes it).
        Raises ModelError (one line naming the file): missing or unreadable model or sidecar, a
        sidecar whose sha256 does not match, thresholds that are not finite numbers, no
        anomaly_map, an explain layer the model lacks.

            with Pipeline.open("runs/screw/screw.onnx", image=0.08) as pipe:
                [r] = pipe("part.png")         # r.verdict, r.inspection.score / .mask / .boxes
        """
        model = open_model(path, backend=backend, providers=providers, device=device, threads=threads,
                           verify=verify)
        try:
            th = Thresholds.resolve(model.thresholds, pixel, image)
            pipe = cls(model, th, explain)
            if warmup:
                n = min(warmup, model.backend.max_batch or warmup)
                model(np.zeros((n, model.spec.height, model.spec.width, model.spec.channels), np.uint8))
        except ValueError as e:
            model.close()
            raise ModelError(f"{model.path}: {e}") from e
        except BaseException:
            model.close()
            raise
        return pipe

    # ------------------------------------------------------------------ the steps

    @property
    def spec(self) -> InputSpec:
        return self.model.spec

    @property
    def notes(self) -> list[str]:
        """What a user should know before trusting the thresholds on this machine (the CLIs print it)."""
        return [n for n in (opencv_note(self.model.sidecar, self.spec.registration.active),) if n]

    def load(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, keep_image: bool = True) -> Prepared:
        """A file -> Prepared (decode, colour, registration, resize). Raises ImageError naming it."""
        return load(path, self.spec, max_pixels, keep_image)

    def prepare(self, image: np.ndarray, bgr: bool = False, keep_image: bool = True,
                decoded: bool = False) -> Prepared:
        """An array -> Prepared: a camera frame (bgr=True, OpenCV's order), an RGB or gray array,
        or (decoded=True) an image already in the model's colour layout uint8 [H, W, C]."""
        if decoded:
            return prepare(image, self.spec, keep_image=keep_image)
        return prepare_frame(image, self.spec, bgr, keep_image)

    def infer(self, items: Sequence[Prepared]) -> list[dict[str, np.ndarray]]:
        """Run the model on prepared images (one batch, split as the backend allows); one dict of
        outputs per image, batch dimension removed. Raises BackendError on a failed run."""
        if not items:
            return []
        outs = self.model(np.stack([p.input for p in items]), self.fetch)
        return [{k: v[i] for k, v in outs.items()} for i in range(len(items))]

    def judge(self, prepared: Prepared, outputs: dict[str, np.ndarray], keep_maps: bool = False,
              min_area: int = 1) -> Inspection:
        """Score, verdict, mask, area and boxes (runtime.postprocess.inspect_map) on the prepared
        image's own pixels: the map goes back through the registration. Raises OutputError for a
        non-finite map."""
        return inspect_map(outputs["anomaly_map"], prepared.size, self.thresholds, prepared.scale,
                           keep_maps=keep_maps, min_area=min_area, to_image=prepared.to_image)

    def __call__(self, images: str | Path | np.ndarray | Iterable[str | Path | np.ndarray], bgr: bool = False,
                 keep_maps: bool = False) -> list[Result]:
        """Inspect paths and/or arrays: the steps prepare -> infer (one batch) -> judge in one call.

        Args:
            images: a path, an array (gray/RGB, or BGR with bgr=True), or a list of them.
            keep_maps: keep the full-size map and mask in each Inspection (for pictures).
        Returns one Result per image, in order; an image whose registration fails gets its
        Result with `error` (and no inspection) and is not run through the model.
        Raises ImageError (an unreadable file), BackendError (a failed run), OutputError (a
        non-finite map).

            results = pipe(["a.png", frame_bgr], bgr=True)
        """
        one = isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if one else list(images)  # type: ignore[list-item, arg-type]
        prepared = [self.load(x) if isinstance(x, (str, Path)) else self.prepare(x, bgr) for x in items]
        return [self.result(p, out, keep_maps) for p, out in zip(prepared, self.infer_registered(prepared))]

    def infer_registered(self, prepared: Sequence[Prepared]) -> list[dict[str, np.ndarray] | None]:
        """infer() in one batch over the images whose registration succeeded; None for the others,
        which the model never sees."""
        outs = iter(self.infer([p for p in prepared if p.ok]))
        return [next(outs) if p.ok else None for p in prepared]

    def result(self, prepared: Prepared, outputs: dict[str, np.ndarray] | None, keep_maps: bool = False) -> Result:
        """One image's Result from infer_registered's outputs: judged, or (None) with the reason its
        registration failed. Raises OutputError for a non-finite map."""
        if outputs is None:
            return Result(prepared, error=registration_error(prepared))
        return Result(prepared, outputs, self.judge(prepared, outputs, keep_maps=keep_maps))

    # ------------------------------------------------------------------ pictures

    def _anomaly_layer(self) -> Layer:
        if self.thresholds.pixel is not None and self.thresholds.pixel > 0:
            return Layer("anomaly_map", (0.0, 2.0 * self.thresholds.pixel), "0 .. 2 x pixel threshold")
        scale = model_scale(self.model, "anomaly_scale")
        if scale is not None:
            return Layer("anomaly_map", (0.0, 2.0 * scale), "0 .. 2 x normal p99")
        return Layer("anomaly_map", None, "per image")

    def _attention_layer(self) -> Layer:
        scale = model_scale(self.model, "attention_scale")
        if scale is not None:
            return Layer("attention", (0.0, 2.0 * scale), "0 .. 2 x normal p99")
        return Layer("attention", None, "per image")

    def legend(self, name: str, verdict: str | None = None) -> str:
        """The bottom line of a panel: what its colours and its outline (on a part with this
        verdict) are."""
        layer = self.layers[name]
        return ov.legend_text(name, layer.range is not None, self.thresholds.pixel, verdict)

    def render(self, result: Result, explain: str | None = None) -> np.ndarray:
        """The overlay of one result as BGR: the map that decides (anomaly_map) by default, the
        paper's attention, or both side by side (`explain`), each on its fixed scale with a colour
        bar, the mask outline at the pixel threshold and the verdict badge, drawn on the decoded
        image as the model sees its colours (gray for a gray model). A failed registration draws
        the image with the failure in the badge."""
        p = result.prepared
        if p.image is None:
            raise ValueError("render needs the decoded pixels: prepare with keep_image=True")
        if result.inspection is None:
            return ov.render(p.image, status=(result.error or "not inspected").upper()[:60])
        names = ["anomaly_map", "attention"] if (explain or self.explain) == "both" else [explain or self.explain]
        panels = []
        for name in names:
            layer = self.layers[name]
            m = result.inspection.anomaly_map if name == "anomaly_map" else None
            if m is None:
                m = p.to_image((result.outputs or {})[name])
            lo, hi = layer.range or (None, None)
            mark = (self.thresholds.pixel, "threshold") if name == "anomaly_map" and self.thresholds.pixel else None
            panels.append(ov.render(p.image, m, result.inspection.mask, result.inspection.verdict,
                                    result.inspection.score, self.thresholds.image, vmin=lo, vmax=hi,
                                    legend=self.legend(name, result.inspection.verdict), colorbar=True, mark=mark))
        return panels[0] if len(panels) == 1 else ov.side_by_side(panels)

    def heatmap(self, result: Result) -> np.ndarray:
        """The anomaly map alone in colour on the image's pixels, on the overlay's scale."""
        inspection = result.inspection
        assert inspection is not None
        m = inspection.anomaly_map if inspection.anomaly_map is not None else \
            result.prepared.to_image((result.outputs or {})["anomaly_map"])
        layer = self.layers["anomaly_map"]
        return ov.colorize(m, *layer.range) if layer.range else ov.heatmap(m)

    # ------------------------------------------------------------------ housekeeping

    def describe(self) -> dict[str, Any]:
        """The model (path, backend, providers...), thresholds and registration, for reports."""
        return {**self.model.describe(), "registration": self.spec.registration.to_mapping()}

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def registration_error(p: Prepared) -> str:
    """The one-line reason of a failed registration: 'registration no_part: <reason>'."""
    reg = p.registration
    return f"registration {reg.status}" + (f": {reg.reason}" if reg.reason else "")

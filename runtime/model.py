"""Open an exported model by path and run it: the same named numpy outputs whatever the backend.

    model = open_model("screw.onnx")                       # backend from the extension
    model = open_model("screw.onnx", backend="tensorrt")   # the engine beside it (screw.trt)
    model = open_model("runs/screw/model.pt")              # PyTorch, the export module itself
    model = open_model("models/screw")                     # a deployment folder: its current version
    out = model(batch)        # uint8 [N, H, W, C] at model.spec size -> {"anomaly_map": ..., ...}

The sidecar (X.yaml beside X.onnx / X.trt, export.sidecar) is read and its sha256 checked before
anything runs; the input size and channels come from it, and so do calibrated thresholds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.deployment import DeploymentError, resolve_model
from core.prepare import InputSpec
from core.sidecar import SidecarError, precision
from core.sidecar import read_sidecar as _read_sidecar
from families import FAMILIES
from runtime import backends as B


class ModelError(RuntimeError):
    """A model that cannot be opened: missing file, missing/stale sidecar, unusable backend."""


@dataclass
class Model:
    path: Path                      # the file the backend runs
    backend: B.Backend
    spec: InputSpec
    sidecar: dict[str, Any] | None = None
    source: Path | None = None      # the path the user gave (may differ with --backend)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.backend.output_names

    @property
    def thresholds(self) -> dict[str, Any]:
        """The sidecar's thresholds section ({} when uncalibrated)."""
        return dict((self.sidecar or {}).get("thresholds") or {})

    def __call__(self, images: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, C] at the model's size -> the graph's named outputs (numpy, batch first);
        `outputs`: only these (ValueError for one the model lacks)."""
        want = (self.spec.height, self.spec.width, self.spec.channels)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"model input must be uint8 [N, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {images.dtype} {list(images.shape)}")
        names = tuple(outputs) if outputs is not None else None
        if names is not None and not set(names) <= set(self.output_names):
            raise ValueError(f"{self.path}: outputs {sorted(set(names) - set(self.output_names))} are not in the model "
                             f"(it has {', '.join(self.output_names)})")
        step = self.backend.max_batch or len(images)
        parts = [self.run(images[i:i + step], names) for i in range(0, len(images), step)]
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def run(self, images: np.ndarray, names: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        """One backend call: an ONNX Runtime session fetches only `names` (fewer copies out of the
        graph; it still runs every node: a line graph is what computes less); engines and the
        PyTorch module compute every output, of which `names` are kept."""
        if names is not None and getattr(self.backend, "selects_outputs", False):
            return self.backend.run(images, names)  # type: ignore[call-arg]
        out = self.backend.run(images)
        return out if names is None else {k: out[k] for k in names}

    def describe(self) -> dict[str, Any]:
        d = {"path": str(self.path), **self.backend.describe(),
             **({"precision": precision(self.sidecar)} if self.sidecar is not None else {}),
             "input": {"height": self.spec.height, "width": self.spec.width, "channels": self.spec.channels}}
        d.update(self.info)
        return d

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_sidecar(model_path: Path, verify: bool = True) -> dict[str, Any]:
    """core.sidecar.read_sidecar with its errors as ModelError (one line, names the file)."""
    try:
        return _read_sidecar(model_path, verify=verify)
    except SidecarError as e:
        raise ModelError(str(e)) from e


def input_spec(inp: dict[str, Any], registration: dict[str, Any] | None, source: str) -> InputSpec:
    """core.prepare.InputSpec with its errors as ModelError."""
    try:
        return InputSpec.from_mapping(inp, registration, source)
    except ValueError as e:
        raise ModelError(str(e)) from e


def sibling_for(path: Path, backend: str) -> Path:
    """The file of `backend`'s kind sharing `path`'s stem (one sidecar per stem), for --backend."""
    for ext, name in B.EXTENSIONS.items():
        if name == backend and path.with_suffix(ext).is_file():
            return path.with_suffix(ext)
    exts = "/".join(e for e, n in B.EXTENSIONS.items() if n == backend)
    raise ModelError(f"--backend {backend}: no {exts} file beside {path} (same stem); export one first "
                     f"(python -m export.onnx / python -m export.tensorrt)")


def checkpoint_from_sidecar(sidecar: dict[str, Any], model_path: Path) -> Path:
    """The source checkpoint a sidecar names (`model.checkpoint`, relative to the sidecar's folder
    when relative). Its sha256 is checked by open_model on the bytes the backend loaded."""
    src = (sidecar.get("model") or {}).get("checkpoint")
    if not src:
        raise ModelError(f"{model_path}: the sidecar names no source checkpoint; pass the .pt file itself")
    if not isinstance(src, str):
        raise ModelError(f"{model_path}: the sidecar's source checkpoint must be a path, got {src!r}")
    # Relative to the sidecar's folder only: a model.pt in the current directory is another model.
    ck = Path(src) if Path(src).is_absolute() else model_path.parent / src
    if not ck.is_file():
        raise ModelError(f"{model_path}: source checkpoint {src} not found (looked for {ck}); "
                         f"pass the .pt file itself")
    return ck


def open_model(path: str | Path, backend: str | None = None, providers: str | list[str] | None = None,
               device: str | None = None, threads: int | None = None, verify: bool = True) -> Model:
    """Open a model file with the backend its extension implies (or `backend`).

    Args:
        path: X.onnx (ONNX Runtime), X.trt/.engine/.plan (TensorRT), X.pt (PyTorch), X.npz (a
            template bank), or a deployment folder (its current version, core.deployment).
        backend: onnxruntime, tensorrt, torch or template instead of the extension's; for another
            kind, the file of that kind with the same stem (screw.onnx -> screw.trt).
        providers, device, threads: ONNX Runtime providers, the device (auto, cpu, cuda, cuda:N)
            and intra-op threads.
        verify: check the model's sha256 against its sidecar (ONNX, TensorRT and template models
            need one; a .pt carries its own config, so its sidecar is optional).
    Returns a Model: `model(uint8 [N, H, W, C])` -> {output name: array}; `model.spec` is its input
    (size, channels, registration), `model.thresholds` its sidecar's thresholds section.
    Raises ModelError (one line naming the file): missing file, missing or stale sidecar, an
    unusable backend (no TensorRT, no GPU), a sidecar that disagrees with the model's input.

        with open_model("models/screw") as model:
            outputs = model(batch)     # batch: prepared inputs, core.prepare
    """
    try:
        given = resolve_model(path)  # a deployment folder runs its current version
    except DeploymentError as e:
        raise ModelError(str(e)) from e
    if not given.is_file():
        raise ModelError(f"{given}: model file not found")
    implied = B.backend_for(given)
    name = backend or implied
    if name is None:
        raise ModelError(f"{given}: unknown model extension '{given.suffix}'; use .onnx, .trt/.engine/.plan, .pt "
                         f"or .npz (a template bank), or name the backend with --backend")
    if name not in B.BACKENDS:
        raise ModelError(f"unknown backend '{name}'; choose one of {', '.join(B.BACKENDS)}")
    sidecar: dict[str, Any] | None = None
    if name == "torch" and implied not in ("onnxruntime", "tensorrt", "torch"):
        raise ModelError(f"{given}: a {implied} model has no PyTorch backend; open it with its own ({implied})")
    if name == "torch":
        settings: dict[str, Any] = {}
        if implied in ("onnxruntime", "tensorrt"):
            # The PyTorch reference of an exported model: same checkpoint and graph settings.
            sidecar = read_sidecar(given, verify)
            family = (sidecar.get("model") or {}).get("family")
            if family in FAMILIES and family != "vae":   # a VAE's sidecar says its arch family (resnet_vae...)
                raise ModelError(f"{given}: --backend torch runs the VAE's export module; a {family} model is "
                                 "checked against PyTorch when it is exported, and runs on onnxruntime or tensorrt")
            file = checkpoint_from_sidecar(sidecar, given)
            m = sidecar.get("model") or {}
            settings = {k: m[k] for k in ("layer", "score", "per_dim", "recon") if m.get(k) is not None}
            settings["outputs"] = sidecar.get("outputs")  # a line graph's reference computes the same few
        else:
            file = given
        try:
            be = B.create("torch", file, device=device, settings=settings)
        except (B.BackendError, ValueError) as e:  # ValueError: an unreadable checkpoint, bad settings
            raise ModelError(str(e)) from e
        # the hash of the bytes the module was built from (training.checkpoint.load_model_hashed):
        # hashing the file again could see a checkpoint training has rewritten since
        want = ((sidecar or {}).get("model") or {}).get("checkpoint_sha256")
        if want and be.settings["checkpoint_sha256"] != want:  # type: ignore[attr-defined]
            be.close()
            raise ModelError(f"{file}: sha256 differs from the checkpoint the sidecar of {given} was exported from")
        own = be.input_spec  # type: ignore[attr-defined]  # the checkpoint's: size and registration
        spec = input_spec((sidecar or {}).get("input") or own, (sidecar or {}).get("registration",
                                                                                   own.get("registration")), str(file))
    else:
        # an extension that implies no backend: the named backend opens the given file itself
        file = given if implied in (name, None) else sibling_for(given, name)
        sidecar = read_sidecar(file, verify)
        spec = input_spec(sidecar.get("input") or {}, sidecar.get("registration"), f"{file} sidecar")
        try:
            be = B.create(name, file, providers=providers, device=device, threads=threads)
        except B.BackendError as e:
            raise ModelError(str(e)) from e
    declared = tuple(getattr(be, "input_shape", ()) or ())
    if len(declared) == 3 and all(isinstance(d, int) and d > 0 for d in declared) and \
            declared != (spec.height, spec.width, spec.channels):
        be.close()  # the sidecar is not hashed: a hand-edited or foreign one must not decide the resize
        raise ModelError(f"{file}: its sidecar says input {spec.height}x{spec.width}x{spec.channels}, the model "
                         f"itself {declared[0]}x{declared[1]}x{declared[2]}; re-export it")
    model = Model(file, be, spec, sidecar, source=given)
    if sidecar is not None:
        listed = set(sidecar.get("outputs") or [])
        missing = listed - set(be.output_names)
        if listed and missing and name != "torch":
            be.close()  # as above: a refused model must not keep its session (or GPU memory) open
            raise ModelError(f"{file}: outputs {sorted(missing)} listed in the sidecar are not in the model")
    return model

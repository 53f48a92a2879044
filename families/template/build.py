"""Build a deployable template model: registered good parts as a reference bank, no training.

    python -m families.template.build --data DIR --out screw.onnx [--size 256] [--channels 1] [--k 5]
        [--sigma S] [--tolerance T] [--registration principal_axis|none] [--lighting background|none]
    python -m families.template.build --config configs/screw_template.yaml --out models/screw.onnx

DIR is a folder of good images, or an MVTec category (its train/good is used). The registration is
fitted on those images (core.registration.fit), every image is registered at the model size, and
the bank (families.template.bank) is written atomically as X.npz, the reference implementation, and, with
--out X.onnx, as an ONNX graph that computes the same map with the bank inside (so ONNX Runtime and
TensorRT run a template model like an exported VAE), checked against the numpy map before it is
kept. One sidecar X.yaml describes both: input size and colour, the fitted registration, the map's
normal scale (the median over the bank of each image's 99th percentile of its map against the
others: overlays draw colours on it before calibration) and outputs [anomaly_map]. The runtime
opens X.onnx or X.npz like any model (by extension). Building the .npz is torch-free (an edge box
can build its own bank); the .onnx needs the `onnx` package. Exit codes: 0 written, 1 failure
(unreadable data, no usable part, a graph that disagrees), 2 usage.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.images import IMAGE_EXTENSIONS, ImageError, is_image_name, read_image
from core.metrics import normal_scale
from core.prepare import InputSpec, prepare
from core.registration import LIGHTINGS, REGISTRATIONS, RegistrationSpec, fit
from core.sidecar import SidecarError, check_sidecar_free, file_entry, write_sidecar
from families import family_of
from families.template.bank import MAX_TOLERANCE, SEARCH, TemplateBank, TemplateError

DEFAULTS = {"size": 256, "channels": 1, "k": 5, "sigma": None, "tolerance": 0, "method": "principal_axis",
            "lighting": "background"}


def good_images(root: Path) -> list[Path]:
    """The good images a bank is built from: DIR/train/good of an MVTec category, else DIR itself."""
    folder = root / "train" / "good" if (root / "train" / "good").is_dir() else root
    if not folder.is_dir():
        raise TemplateError(f"{root}: not a folder")
    files = sorted(p for p in folder.iterdir() if is_image_name(p) and p.is_file())
    if len(files) < 2:
        raise TemplateError(f"{folder}: a template bank needs at least 2 good images, found {len(files)} "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def build(data: str | Path, out: str | Path, size: int = 256, channels: int = 1, k: int = 5,
          sigma: float | None = None, method: str = "principal_axis", lighting: str = "background",
          tolerance: int = 0) -> dict[str, Any]:
    """Fit, register, bank, write X.npz (+ X.onnx when `out` ends in .onnx) and X.yaml. Returns
    what was built (paths, counts, the graph's parity, seconds).

    Raises TemplateError (no usable images, a graph that disagrees with the bank), ImageError (an
    unreadable file: a bank must not silently miss a part), SidecarError (X.yaml belongs to another
    model), ValueError (settings).
    """
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    if out.suffix == ".onnx" and size % SEARCH:  # before any work or write: see onnx_size_error
        raise ValueError(onnx_size_error(size))
    # before any work: X.yaml must not be another model's (a rebuild replaces its own X.onnx and X.npz)
    check_sidecar_free(out, own=(out.with_suffix(".onnx").name, out.with_suffix(".npz").name))
    if out.suffix == ".onnx":
        from families.template.graph import template_graph  # noqa: PLC0415 - needs the onnx package
    good = register_good(data, size, channels, method, lighting)
    kept, input_spec, failed = good.images, good.spec, good.failed
    bank = TemplateBank(kept, k, sigma, tolerance)
    loo = bank.leave_one_out()
    scale = normal_scale(loo, floor=0.0)
    npz = out.with_suffix(".npz")
    model = {"family": "template", "arch": "template", "anomaly_map": "template", "k": bank.k, "sigma": bank.sigma,
             "tolerance": bank.tolerance, "bank_images": int(len(bank.images)), "anomaly_scale": max(scale, 1e-8), "data": str(data),
             "registration_failures": [f"{name}: {status}" for name, status in failed]}
    info = sidecar_info(bank, input_spec, model, f"per pixel the least {difference(bank)} to the {bank.k} nearest "
                        f"bank images (64x64 L2 search), Gaussian blur sigma {bank.sigma:g} px, gray levels / 255",
                        good.files)
    parity = None
    if out.suffix == ".onnx":
        # checked before X.npz is replaced: a graph that disagrees leaves the previous pair whole
        parity = template_graph(bank, out, kept)  # writes X.onnx atomically once it agrees with the bank
    bank.save(npz)
    if out.suffix == ".onnx":
        info["files"] = {npz.name: file_entry(npz, format="template_bank", role="reference: the numpy map")}
        info["export"]["parity"] = parity
    side = write_sidecar(out, info)
    return {"bank": out, "sidecar": side, "images": len(kept), "failed": failed, "anomaly_scale": scale,
            "bytes": out.stat().st_size, "parity": parity, "seconds": time.perf_counter() - started,
            "notes": good.notes}


@dataclass
class Registered:
    """Good images registered at the model size: what a bank (and a family trained on one) holds."""
    images: np.ndarray                 # uint8 [N, size, size, C], the ones that registered
    spec: InputSpec                    # input size, colour and the fitted registration
    files: int                         # images read
    failed: list[tuple[str, str]]      # (file name, registration status) left out
    notes: list[str]                   # what fit() warned (a fallback, left-out images)


def register_good(data: str | Path, size: int, channels: int, method: str, lighting: str) -> Registered:
    """Read the good images of `data`, fit the registration on them and register each at the
    model size. Raises TemplateError (fewer than 2 usable images), ImageError (an unreadable file:
    a bank must not silently miss a part)."""
    files = good_images(Path(data))
    decoded = [read_image(p, channels) for p in files]
    with warnings.catch_warnings(record=True) as caught:  # fit's fallback to none is reported below
        warnings.simplefilter("always")
        spec = fit(decoded, RegistrationSpec(method, lighting)) if method != "none" or lighting != "none" \
            else RegistrationSpec()
    input_spec = InputSpec(size, size, channels, "gray" if channels == 1 else "rgb", spec)
    prepared = [prepare(img, input_spec, keep_image=False) for img in decoded]
    failed = [(f.name, p.registration.status) for f, p in zip(files, prepared) if not p.ok]
    if len(prepared) - len(failed) < 2:
        raise TemplateError(f"{data}: fewer than 2 images could be registered ({len(failed)} of {len(files)} failed, "
                            f"e.g. {failed[0][0]}: {failed[0][1]})")
    return Registered(np.stack([p.input for p in prepared if p.ok]), input_spec, len(files), failed,
                      [str(w.message) for w in caught])


def onnx_size_error(size: int) -> str:
    """The graph's search copies are SEARCH x SEARCH block means (an AveragePool of size / SEARCH):
    a size that is not a multiple used to fail only after the bank was written, without its sidecar."""
    near = max(SEARCH, size // SEARCH * SEARCH)
    return (f"--size {size}: a template ONNX graph needs a multiple of {SEARCH} (e.g. {near}); --out X.npz writes "
            "the bank alone at any size")


def difference(bank: TemplateBank) -> str:
    """What the map's difference to a reference is, in words (sidecars)."""
    if not bank.tolerance:
        return "|difference|"
    side = 2 * bank.tolerance + 1
    return f"distance outside the reference's range over {side}x{side} pixels (tolerance {bank.tolerance} px)"


def sidecar_info(bank: TemplateBank, spec: InputSpec, model: dict[str, Any], map_text: str, n: int) -> dict[str, Any]:
    """The sidecar of a model built on `bank` (template, and the families built on its references):
    `model` its model section, `map_text` what its map computes, n the good images read."""
    h, w, c = bank.images.shape[1:]
    return {
        "model": model,
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": int(h), "width": int(w),
                  "channels": int(c), "color": spec.color},
        "outputs": ["anomaly_map"],
        "output_shapes": {"anomaly_map": ["N", 1, int(h), int(w)]},
        "registration": spec.registration.to_mapping(),
        "preprocessing": {"host": {"read": "core.images.read_image", "prepare": "core.prepare.prepare: registration "
                                   "(the section above), then the model's size"},
                          "map": map_text},
        "export": {"images": n, "bank_bytes": bank.nbytes},
    }


def from_config(path: str | Path) -> dict[str, Any]:
    """build()'s settings from a YAML config (model: {size, channels, k, sigma, tolerance}, data: {root},
    registration: {method, lighting}); ValueError naming the file for anything else."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the config ({str(e).splitlines()[0]})") from e
    model, reg = raw.get("model") or {}, raw.get("registration") or {}
    if not isinstance(model, dict) or family_of({"model": {"arch": "template", **model}}).name != "template":
        raise ValueError(f"{path}: the config builds another family than 'template' (model: {model}); build it "
                         "with python -m training.retrain, or train a VAE with python -m training.train")
    settings = {k: model[k] for k in ("size", "channels", "k", "sigma", "tolerance") if k in model}
    settings.update({k: reg[k] for k in ("method", "lighting") if k in reg})
    root = (raw.get("data") or {}).get("root")
    return {**DEFAULTS, **settings, **({"data": root} if root else {})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m families.template.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML with model {size, channels, k, sigma, tolerance}, data {root}, "
                                    "registration {...}")
    p.add_argument("--data", help="folder of good images, or an MVTec category (uses train/good)")
    p.add_argument("--out", required=True, help="X.onnx (graph + X.npz reference bank) or X.npz (bank only); "
                                                "the sidecar X.yaml beside it")
    p.add_argument("--size", type=int, help=f"model input size (default {DEFAULTS['size']})")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 gray, 3 colour (default 1)")
    p.add_argument("--k", type=int, help=f"nearest references per pixel (default {DEFAULTS['k']})")
    p.add_argument("--sigma", type=float, help="blur in model pixels (default 3 x size / 256)")
    p.add_argument("--tolerance", type=int, help="pixels a part may sit off its reference at an edge "
                                                 "(default 0: pixel by pixel)")
    p.add_argument("--registration", choices=REGISTRATIONS, help="pose normalization (default principal_axis)")
    p.add_argument("--lighting", choices=LIGHTINGS, help="lighting normalization (default background)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if Path(args.out).suffix not in (".onnx", ".npz"):
        p.error(f"--out must end with .onnx (graph and bank) or .npz (bank only), not '{args.out}'")
    try:
        settings = from_config(args.config) if args.config else dict(DEFAULTS)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    given = {"data": args.data, "size": args.size, "channels": args.channels, "k": args.k, "sigma": args.sigma,
             "tolerance": args.tolerance, "method": args.registration, "lighting": args.lighting}
    settings.update({k: v for k, v in given.items() if v is not None})
    if not settings.get("data"):
        p.error("--data is required (or a --config with data.root)")
    if not Path(settings["data"]).is_dir():
        print(f"error: --data {settings['data']}: not a folder", file=sys.stderr)
        return 2
    if settings["size"] < 16 or settings["k"] < 1:
        p.error("--size must be >= 16 and --k >= 1")
    if not isinstance(settings["tolerance"], int) or not 0 <= settings["tolerance"] <= MAX_TOLERANCE:
        p.error(f"--tolerance must be a count of pixels in [0, {MAX_TOLERANCE}], not {settings['tolerance']!r}")
    if Path(args.out).suffix == ".onnx" and settings["size"] % SEARCH:
        p.error(onnx_size_error(settings["size"]))
    try:
        r = build(**settings, out=args.out)
    except (TemplateError, ImageError, SidecarError, ValueError, OSError, ImportError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for name, status in r["failed"]:
        print(f"note: {name}: registration {status}, left out of the bank", file=sys.stderr)
    if r["parity"]:
        print(f"parity: the graph's anomaly_map against the numpy bank on {r['parity']['images']} images: max |err| "
              f"{r['parity']['max_abs_err']:.2e} ({r['parity']['rel_err']:.1e} of its range); "
              f"{r['parity']['ties']} image(s) at a tie between equally near references")
    print(f"wrote {r['bank']} ({r['images']} references, {r['bytes'] / 2**20:.1f} MB, normal p99 "
          f"{r['anomaly_scale']:.4g}, {r['seconds']:.0f} s) and {r['sidecar']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

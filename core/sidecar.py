"""The sidecar `X.yaml` beside each exported model `X.onnx` / engine `X.trt` (one per stem).

It is what a runtime needs besides the graph itself, and what ties the files together:

    schema: 2
    model: {family, arch, latent, layer, score, anomaly_map, blur_sigma, per_dim, recon,
            checkpoint (relative to the sidecar's folder), checkpoint_sha256,
            attention_scale, anomaly_scale}   # the maps' normal 99th percentiles (overlay colours)
    registration: {method, lighting, ...}     # core.registration: run on the host before the graph
    input: {name: image, dtype: uint8, layout: NHWC, height, width, channels, color}
    outputs: [mu, logvar, activations, gradients, attention, anomaly_map, ...]   # what the graph has
    precision: fp32 | int8    # the ONNX graph's arithmetic (absent: fp32); an engine's is in its files entry
    quantization: {method, format, per_channel, source, calibration: {folder, images, sha256}, map_error}
                              # int8 only (export.quantize): what it was quantized from and with
    output_shapes: {mu: [N, 32], ...}
    files: {X.onnx: {sha256, bytes, format, opset, weights}, X.trt: {sha256, precision, trt, source, ...}}
                              # source: {file, sha256} of the ONNX the engine was built from
    thresholds: {pixel, image, rule, ...}   # filled by calibration (update_sidecar); {} before
    preprocessing: {...}      # host side (decode, color, resize) and in-graph (scale, normalize)
    created: ISO 8601 UTC
    versions: {python, torch, onnx, project, ...}

Loading a model whose sha256 differs from its sidecar entry is an error (`SidecarError`) that
names both files: a replaced model with stale thresholds would give wrong verdicts silently.
Written atomically with yaml.safe_dump, read with yaml.safe_load.

Schemas: a reader upgrades an older sidecar in memory (`UPGRADES`, one step per version: schema 1
had no registration section, which meant none) and refuses a newer one; writers always write the
current schema. Torch-free (core): the edge runtime reads it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import cv2
import yaml

from core.files import atomic_write, sha256

SCHEMA = 2
REQUIRED = ("schema", "model", "input", "outputs", "files", "thresholds")
# The type each section must have: readers index into them, and `files: null` would otherwise
# surface as a TypeError far from the file that holds it.
SECTION_TYPES: dict[str, type] = {"model": dict, "input": dict, "outputs": list, "files": dict, "thresholds": dict,
                                  "registration": dict}
NO_REGISTRATION = {"method": "none", "lighting": "none"}
# the graph's arithmetic: export.onnx writes fp32, export.quantize int8 (static, QDQ); sidecars
# written before quantization existed have no `precision` and are fp32
PRECISIONS = ("fp32", "int8")


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 predates registration: its models saw plain resized images."""
    return {**data, "registration": dict(NO_REGISTRATION), "schema": 2}


# schema N -> the upgrade to N + 1; applied in order until SCHEMA
UPGRADES = {1: _from_schema_1}


class SidecarError(RuntimeError):
    """Missing, unreadable or mismatching sidecar; the message names the file and what to do."""


def sidecar_path(model_path: str | Path) -> Path:
    """X.onnx / X.trt -> X.yaml (the sidecar is shared by every file with the same stem)."""
    return Path(model_path).with_suffix(".yaml")


def versions(**extra: str) -> dict[str, str]:
    """Versions of what produced a file (absent packages are left out)."""
    out = {"python": platform.python_version()}
    for dist, key in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("vae-inspect", "project")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    out["opencv"] = str(cv2.__version__)    # the registration's pixels depend on it (opencv_note)
    out.update(extra)
    return out


def opencv_note(data: dict[str, Any] | None, registered: bool) -> str | None:
    """A line for a model whose registration ran on another OpenCV release (major.minor) when its
    thresholds were set (calibration records it) or, uncalibrated, when it was built: warpAffine's
    interpolation differs between releases (4.x puts sub-pixel positions on a 1/32 grid), so
    registered pixels, and the scores the thresholds were set on, can differ by a few gray levels
    (the screws' template at 256 px: image AUROC 0.944 on OpenCV 4.13, 0.965 on 5.1, the same
    code and images); None when they agree or nothing is recorded."""
    data = data or {}
    built = str(((data.get("thresholds") or {}).get("calibrated_with") or {}).get("opencv")
                or (data.get("versions") or {}).get("opencv") or "")
    here = str(cv2.__version__)
    if not registered or not built or built.split(".")[:2] == here.split(".")[:2]:
        return None
    return (f"the model was built with OpenCV {built} and registers parts here with OpenCV {here}: registered pixels "
            f"can differ slightly; calibrate on this machine (python -m calibration.calibrate) to set thresholds on "
            f"its own scores, or install opencv-python=={built}")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def file_entry(path: str | Path, **info: Any) -> dict[str, Any]:
    """A `files` entry: sha256 and size of the file, plus what describes it (format, precision...).
    The measured sha256 and size win over any in `info` (a stale entry carried over from before)."""
    p = Path(path)
    measured = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return {**measured, **info, **measured}


def check_types(data: dict[str, Any], path: Path) -> None:
    """SidecarError naming `path` when a section, an entry of `files`, or a threshold has the
    wrong type: a threshold that is a list, a mapping, a boolean (YAML's `yes`) or not finite would
    otherwise be read as 1.0, fail deep in post-processing, or pass every part."""
    for key, kind in SECTION_TYPES.items():
        if key in data and not isinstance(data[key], kind):
            raise SidecarError(f"{path}: '{key}' must be a {'list' if kind is list else 'mapping'}, "
                               f"got {type(data[key]).__name__} ({str(data[key])[:60]})")
    outputs = data.get("outputs")
    if isinstance(outputs, list) and not all(isinstance(n, str) for n in outputs):
        raise SidecarError(f"{path}: 'outputs' must be a list of output names, got {str(outputs)[:60]}")
    if data.get("precision", "fp32") not in PRECISIONS:
        raise SidecarError(f"{path}: precision must be one of {', '.join(PRECISIONS)}, got {data['precision']!r}")
    for name, entry in (data.get("files") or {}).items():
        if not isinstance(entry, dict):
            raise SidecarError(f"{path}: files entry '{name}' must be a mapping, got {type(entry).__name__}")
    for kind in ("pixel", "image"):
        value = (data.get("thresholds") or {}).get(kind)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise SidecarError(f"{path}: thresholds.{kind} must be a finite number, got "
                               f"{type(value).__name__} ({str(value)[:60]}); re-calibrate or fix it by hand")


def upgrade(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`data` brought to the current schema (in memory), or SidecarError for an unknown one."""
    version = data.get("schema")
    if isinstance(version, bool):  # YAML's `yes` is True, and True == 1 would pass for schema 1
        version = repr(version)
    if isinstance(version, int) and version > SCHEMA:
        raise SidecarError(f"{path}: sidecar schema {version} is not supported (this version reads up to "
                           f"{SCHEMA}): written by a newer vae-inspect; upgrade it")
    while version != SCHEMA:
        step = UPGRADES.get(version) if isinstance(version, int) else None
        if step is None:
            raise SidecarError(f"{path}: sidecar schema {version!r} is not supported (expected 1..{SCHEMA})")
        data = step(data)
        version = data["schema"]
    return data


def _dump(path: Path, info: dict[str, Any]) -> None:
    text = yaml.safe_dump(info, sort_keys=False, default_flow_style=None, width=110)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _previous(path: Path) -> dict[str, Any]:
    """The sidecar at `path` as it is now ({} when there is none or it is unreadable)."""
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _listed(old: dict[str, Any]) -> list[str]:
    """The files an existing sidecar (as `_previous` read it) lists."""
    files = old.get("files")
    return [str(f) for f in files] if isinstance(files, dict) else []


def check_sidecar_free(model_path: str | Path, old: dict[str, Any] | None = None, own: tuple[str, ...] = ()) -> None:
    """SidecarError when X.yaml already describes other files and not X: X.onnx and X.trt share
    one sidecar, so writing X's would destroy another model's (its thresholds included); or when
    X.yaml is not a sidecar at all (a config named like the model; ours carry `schema`, even a
    damaged one, whose replacement loses nothing). Called before a long export or build, so
    nothing is written when the name is taken. `old`: the sidecar already read, if it was; `own`:
    other file names of the same stem this write also replaces (a template's X.onnx and X.npz)."""
    model_path = Path(model_path)
    path = sidecar_path(model_path)
    old = _previous(path) if old is None else old
    listed = _listed(old)
    if path.is_file() and not listed and "schema" not in old:
        raise SidecarError(f"{path}: exists and is not a model sidecar (a config?); writing {model_path.name}'s "
                           "sidecar there would replace it: move it or choose another name")
    if listed and model_path.name not in listed and not set(listed) <= set(own):
        raise SidecarError(f"{path}: already the sidecar of {', '.join(listed)} (another "
                           f"model); writing {model_path.name} there would replace it: choose another name")


def write_sidecar(model_path: str | Path, info: dict[str, Any]) -> Path:
    """Write X.yaml for X.onnx/X.trt: `info` holds model/input/outputs/preprocessing (and optionally
    files, thresholds); the model file's entry (sha256, size) is added from the file itself,
    `schema`, `created` and `versions` are filled in. Returns the sidecar path."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise SidecarError(f"{model_path}: model file not found, cannot write its sidecar")
    data: dict[str, Any] = {"schema": SCHEMA}
    data.update(copy.deepcopy(info))
    data.setdefault("files", {})
    data.setdefault("thresholds", {})
    data.setdefault("registration", dict(NO_REGISTRATION))
    check_types(data, sidecar_path(model_path))
    data["files"][model_path.name] = file_entry(model_path, **data["files"].get(model_path.name, {}))
    data.setdefault("created", now())
    data.setdefault("versions", versions())
    for key in REQUIRED:
        if key not in data:
            raise SidecarError(f"{sidecar_path(model_path)}: sidecar info lacks '{key}'")
    path = sidecar_path(model_path)
    old = _previous(path)
    check_sidecar_free(model_path, old, own=tuple(data["files"]))  # the files this sidecar will list
    dropped = [f for f in _listed(old) if f not in data["files"]]
    if dropped:  # a re-export: what was built from the previous model no longer matches it
        warnings.warn(f"{path}: no longer lists {', '.join(dropped)} (made from the previous "
                      f"{model_path.name}); rebuild or re-calibrate it", stacklevel=2)
    if old.get("thresholds") and not data["thresholds"]:
        entry = (old.get("files") or {}).get(model_path.name) or {}
        if entry.get("sha256") == data["files"][model_path.name]["sha256"]:
            data["thresholds"] = old["thresholds"]  # the very same model: its calibration still holds
        else:
            warnings.warn(f"{path}: the calibrated thresholds belonged to the previous {model_path.name} and are "
                          "dropped: re-calibrate", stacklevel=2)
    _dump(path, data)
    return path


def precision(data: dict[str, Any]) -> str:
    """The graph's arithmetic a (checked) sidecar records: fp32 unless export.quantize wrote int8."""
    return str(data.get("precision", "fp32"))


def read_sidecar(model_path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The sidecar of X.onnx / X.trt. With verify, the model file must exist and its sha256 must be
    the one recorded for it. Raises SidecarError naming the file otherwise."""
    model_path = Path(model_path)
    path = sidecar_path(model_path)
    if not path.is_file():
        raise SidecarError(f"{path}: sidecar missing for {model_path.name} "
                           f"(re-export with `python -m export.onnx` or restore the .yaml beside the model)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SidecarError(f"{path}: unreadable sidecar ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
        raise SidecarError(f"{path}: not a model sidecar (missing {', '.join(missing)})")
    data = upgrade(data, path)
    check_types(data, path)
    if verify:
        entry = data["files"].get(model_path.name)
        if not entry or "sha256" not in entry:
            raise SidecarError(f"{path}: has no entry for {model_path.name}; it describes "
                               f"{', '.join(data['files']) or 'no file'}")
        if not model_path.is_file():
            raise SidecarError(f"{model_path}: model file not found (its sidecar is {path})")
        actual = sha256(model_path)
        if actual != entry["sha256"]:
            raise SidecarError(f"{model_path}: sha256 {actual[:16]}... does not match its sidecar {path} "
                               f"({str(entry['sha256'])[:16]}...): the model was replaced or corrupted; "
                               f"re-export it (thresholds in the sidecar belong to the old model)")
    return data


def update_sidecar(model_path: str | Path, files: dict[str, dict[str, Any]] | None = None,
                   thresholds: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   verify: bool = False, backup: bool = False, expect_sha256: str | None = None,
                   **sections: Any) -> dict[str, Any]:
    """Add or replace sections of the sidecar of `model_path`, atomically (a crash leaves the old
    or the new file, never half of one).

    Args:
        model_path: X.onnx / X.trt; its sidecar X.yaml must exist already (written by export).
        files: file entries to add or replace, e.g. the engine beside the ONNX {"X.trt": {sha256, ...}}.
        thresholds: the whole thresholds section (calibration), replacing the old one; or a
            function of the section as the file holds it now, for a change of some keys (the
            camera's w key: the pixel threshold only) that must not revert the others to a copy
            read earlier.
        verify: refuse (SidecarError) when `model_path`'s sha256 is not the one recorded: thresholds
            must never be written beside another model than the one they were computed on.
        backup: keep the previous sidecar as X.yaml.bak (calibration does: a threshold change can
            be undone by hand).
        expect_sha256: the sha256 the sidecar must record for `model_path`: the model the new
            values were computed on. verify alone passes when a re-export replaced the model and
            its sidecar together meanwhile (calibration running for minutes).
        **sections: other top-level sections (not `schema`).
    Returns the new content. Raises SidecarError naming the file (missing, unreadable, wrong
    types, a hash mismatch with verify) and OSError when the folder is not writable.

        update_sidecar("screw.onnx", thresholds={"pixel": 0.12, "image": 0.3}, verify=True, backup=True)
    """
    path = sidecar_path(model_path)
    data = read_sidecar(model_path, verify=verify)
    recorded = (data["files"].get(Path(model_path).name) or {}).get("sha256")
    if expect_sha256 is not None and recorded != expect_sha256:
        raise SidecarError(f"{Path(model_path)}: re-exported since the new values were computed on it (sha256 "
                           f"{str(recorded)[:16]}... now, {expect_sha256[:16]}... then): they belong to the previous "
                           f"model and are not written to {path}; compute them again")
    if files:
        data["files"].update(copy.deepcopy(files))
    if callable(thresholds):
        data["thresholds"] = copy.deepcopy(thresholds(copy.deepcopy(data["thresholds"])))
    elif thresholds is not None:
        data["thresholds"] = copy.deepcopy(thresholds)
    for key, value in sections.items():
        if key == "schema":
            raise SidecarError(f"{path}: the schema version is not updatable")
        data[key] = copy.deepcopy(value)
    check_types(data, path)
    if backup:
        old = path.read_bytes()
        atomic_write(path.with_name(path.name + ".bak"), lambda tmp: Path(tmp).write_bytes(old))
    _dump(path, data)
    return data


__all__ = ["PRECISIONS", "SCHEMA", "SidecarError", "check_sidecar_free", "file_entry", "opencv_note", "precision",
           "read_sidecar", "sidecar_path", "update_sidecar", "upgrade", "versions", "write_sidecar"]

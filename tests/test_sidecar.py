"""export.sidecar: X.yaml beside X.onnx / X.trt, sha256-verified."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.sidecar import (SCHEMA, SidecarError, file_entry, opencv_note, precision, read_sidecar, sidecar_path, update_sidecar,
                            versions, write_sidecar)
from core.files import sha256

INFO = {"model": {"family": "resnet_vae", "latent": 32, "layer": "layer3", "score": "sum_mu",
                  "anomaly_map": "recon_error_blur", "blur_sigma": 4.0, "checkpoint_sha256": "ab" * 32},
        "input": {"height": 64, "width": 64, "channels": 1, "color": "gray"},
        "outputs": ["mu", "logvar", "activations", "gradients", "attention", "anomaly_map"],
        "preprocessing": {"graph": {"mean": 0.5, "std": 0.5}}}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "screw.onnx"
    p.write_bytes(b"not really onnx, but bytes to hash")
    return p


def test_roundtrip_and_schema(model_file: Path) -> None:
    path = write_sidecar(model_file, INFO)
    assert path == model_file.with_suffix(".yaml") == sidecar_path(model_file.with_suffix(".trt"))
    data = read_sidecar(model_file)
    assert data["schema"] == SCHEMA and data["thresholds"] == {}
    assert data["files"]["screw.onnx"]["sha256"] == sha256(model_file)
    assert data["files"]["screw.onnx"]["bytes"] == model_file.stat().st_size
    assert data["model"] == INFO["model"] and data["outputs"] == INFO["outputs"]
    assert data["created"] and "torch" in data["versions"]
    assert yaml.safe_load(path.read_text()) == data  # plain YAML, no python tags
    assert sorted(p.name for p in model_file.parent.iterdir()) == ["screw.onnx", "screw.yaml"]  # no temp files


def test_sha256_mismatch_is_an_error_naming_both_files(model_file: Path) -> None:
    write_sidecar(model_file, INFO)
    model_file.write_bytes(b"a replaced model")
    with pytest.raises(SidecarError, match=r"screw\.onnx: sha256 .* does not match its sidecar .*screw\.yaml"):
        read_sidecar(model_file)
    assert read_sidecar(model_file, verify=False)["model"]["layer"] == "layer3"


def test_missing_sidecar_entry_and_model(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SidecarError, match=r"screw\.yaml: sidecar missing for screw\.onnx"):
        read_sidecar(model_file)
    write_sidecar(model_file, INFO)
    engine = tmp_path / "screw.trt"
    engine.write_bytes(b"engine")
    with pytest.raises(SidecarError, match=r"has no entry for screw\.trt"):
        read_sidecar(engine)
    model_file.unlink()
    with pytest.raises(SidecarError, match="model file not found"):
        read_sidecar(model_file)
    with pytest.raises(SidecarError, match="model file not found"):
        write_sidecar(model_file, INFO)


def test_bad_sidecars(model_file: Path) -> None:
    path = model_file.with_suffix(".yaml")
    path.write_text("just: [unclosed")
    with pytest.raises(SidecarError, match="unreadable sidecar"):
        read_sidecar(model_file)
    path.write_text(yaml.safe_dump({"schema": 1, "model": {}}))
    with pytest.raises(SidecarError, match="not a model sidecar .*input"):
        read_sidecar(model_file)
    write_sidecar(model_file, INFO)
    data = yaml.safe_load(path.read_text())
    data["schema"] = 99
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SidecarError, match="schema 99 is not supported"):
        read_sidecar(model_file)
    with pytest.raises(SidecarError, match="lacks 'outputs'"):
        write_sidecar(model_file, {k: v for k, v in INFO.items() if k != "outputs"})


@pytest.mark.parametrize("key, value, message", [
    ("files", None, "'files' must be a mapping, got NoneType"),
    ("files", ["screw.onnx"], "'files' must be a mapping, got list"),
    ("files", {"screw.onnx": "abc"}, "files entry 'screw.onnx' must be a mapping, got str"),
    ("outputs", "anomaly_map", "'outputs' must be a list, got str"),
    ("thresholds", None, "'thresholds' must be a mapping"),
    ("input", 64, "'input' must be a mapping, got int"),
    ("outputs", ["anomaly_map", 3], "'outputs' must be a list of output names"),
    ("precision", "int4", "precision must be one of fp32, int8, got 'int4'"),
    ("precision", None, "precision must be one of fp32, int8, got None"),
])
def test_sections_of_the_wrong_type_name_the_file(model_file: Path, key: str, value: object, message: str) -> None:
    write_sidecar(model_file, INFO)
    path = model_file.with_suffix(".yaml")
    data = yaml.safe_load(path.read_text())
    data[key] = value
    path.write_text(yaml.safe_dump(data))
    for verify in (True, False):
        with pytest.raises(SidecarError, match=rf"screw\.yaml: {message}"):
            read_sidecar(model_file, verify=verify)
    with pytest.raises(SidecarError, match=r"screw\.yaml: "):
        update_sidecar(model_file, thresholds={})
    with pytest.raises(SidecarError, match=rf"screw\.yaml: {message}"):
        write_sidecar(model_file, {**INFO, key: value})


def test_measured_sha256_wins_over_a_stale_entry(model_file: Path) -> None:
    stale = {"sha256": "0" * 64, "bytes": 1, "format": "onnx"}
    entry = file_entry(model_file, **stale)
    assert entry == {"sha256": sha256(model_file), "bytes": model_file.stat().st_size, "format": "onnx"}
    write_sidecar(model_file, {**INFO, "files": {"screw.onnx": stale}})
    data = read_sidecar(model_file)  # verifies: the recorded sha256 is the file's
    assert data["files"]["screw.onnx"]["format"] == "onnx"


def test_update_adds_the_engine_and_thresholds(model_file: Path, tmp_path: Path) -> None:
    write_sidecar(model_file, INFO)
    engine = tmp_path / "screw.trt"
    engine.write_bytes(b"engine bytes")
    update_sidecar(model_file, files={"screw.trt": {"sha256": sha256(engine), "precision": "fp16", "trt": "10.3"}})
    thresholds = {"pixel": 0.123, "image": 0.456, "rule": {"pixel": "best-iou", "image": "fpr=0.05"}}
    data = update_sidecar(engine, thresholds=thresholds)
    assert data["thresholds"] == thresholds
    for f in (model_file, engine):  # both files verify against the one shared sidecar
        d = read_sidecar(f)
        assert set(d["files"]) == {"screw.onnx", "screw.trt"} and d["thresholds"] == thresholds
    assert read_sidecar(engine)["files"]["screw.trt"]["precision"] == "fp16"
    with pytest.raises(SidecarError, match="not updatable"):
        update_sidecar(model_file, schema=2)
    with pytest.raises(SidecarError, match="sidecar missing"):
        update_sidecar(tmp_path / "other.onnx", thresholds={})


def test_a_sidecar_of_another_file_is_never_overwritten(model_file: Path) -> None:
    engine = model_file.with_suffix(".trt")
    engine.write_bytes(b"an engine built from another onnx")
    write_sidecar(engine, INFO)  # screw.yaml now describes screw.trt only (a frozen copy)
    before = sidecar_path(model_file).read_bytes()
    with pytest.raises(SidecarError, match="already the sidecar of screw.trt"):
        write_sidecar(model_file, INFO)
    assert sidecar_path(model_file).read_bytes() == before


def test_a_re_export_says_which_entries_it_drops(model_file: Path) -> None:
    write_sidecar(model_file, INFO)
    engine = model_file.with_suffix(".trt")
    engine.write_bytes(b"engine")
    update_sidecar(model_file, files={engine.name: file_entry(engine, format="tensorrt")})
    with pytest.warns(UserWarning, match="no longer lists screw.trt"):
        write_sidecar(model_file, INFO)
    assert list(read_sidecar(model_file)["files"]) == ["screw.onnx"]


def test_a_files_entry_without_sha256_is_no_entry(model_file: Path) -> None:
    write_sidecar(model_file, INFO)
    data = yaml.safe_load(sidecar_path(model_file).read_text())
    data["files"][model_file.name] = {"bytes": 3}
    sidecar_path(model_file).write_text(yaml.safe_dump(data))
    with pytest.raises(SidecarError, match="has no entry for screw.onnx"):
        read_sidecar(model_file)


def test_a_yaml_that_is_not_a_sidecar_is_never_overwritten(model_file: Path) -> None:
    config = sidecar_path(model_file)
    config.write_text("model: {arch: resnet18}\ntrain: {epochs: 150}\n")  # a training config named like the model
    with pytest.raises(SidecarError, match="exists and is not a model sidecar"):
        write_sidecar(model_file, INFO)
    assert "epochs: 150" in config.read_text()


def test_a_re_export_keeps_thresholds_of_the_same_model_and_warns_for_another(model_file: Path) -> None:
    write_sidecar(model_file, INFO)
    update_sidecar(model_file, thresholds={"pixel": 0.1, "image": 0.2})
    write_sidecar(model_file, INFO)  # the same bytes: the calibration still holds
    assert read_sidecar(model_file)["thresholds"] == {"pixel": 0.1, "image": 0.2}
    model_file.write_bytes(b"another model")
    with pytest.warns(UserWarning, match="thresholds belonged to the previous screw.onnx and are dropped"):
        write_sidecar(model_file, INFO)
    assert read_sidecar(model_file)["thresholds"] == {}


def test_a_schema_1_sidecar_is_upgraded_in_memory(model_file: Path) -> None:
    """Sidecars written before registration existed still open: they mean `registration: none`."""
    write_sidecar(model_file, INFO)
    path = model_file.with_suffix(".yaml")
    old = yaml.safe_load(path.read_text())
    old["schema"] = 1
    del old["registration"]
    path.write_text(yaml.safe_dump(old))
    data = read_sidecar(model_file)
    assert data["schema"] == SCHEMA == 2 and data["registration"] == {"method": "none", "lighting": "none"}
    assert yaml.safe_load(path.read_text())["schema"] == 1  # reading never writes
    update_sidecar(model_file, thresholds={"pixel": 0.1})
    assert yaml.safe_load(path.read_text())["schema"] == 2  # writing writes the current schema
    for bad in (0, "2", True):
        path.write_text(yaml.safe_dump({**old, "schema": bad}))
        with pytest.raises(SidecarError, match="is not supported"):
            read_sidecar(model_file)


@pytest.mark.parametrize("value", [[0.1], {"a": 1}, True, "0.5", float("nan"), float("inf")])
def test_a_threshold_that_is_not_a_finite_number_is_refused(model_file: Path, value: object) -> None:
    """A list or mapping gave a traceback in post-processing and YAML's `yes` was read as 1.0."""
    write_sidecar(model_file, INFO)
    path = model_file.with_suffix(".yaml")
    data = yaml.safe_load(path.read_text())
    data["thresholds"] = {"pixel": 0.1, "image": value}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SidecarError, match=r"screw\.yaml: thresholds\.image must be a finite number"):
        read_sidecar(model_file)
    data["thresholds"] = {}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SidecarError, match="thresholds.image must be a finite number"):
        update_sidecar(model_file, thresholds={"image": value})
    assert yaml.safe_load(path.read_text())["thresholds"] == {}  # nothing written


def test_update_with_verify_and_backup(model_file: Path) -> None:
    write_sidecar(model_file, INFO)
    path = model_file.with_suffix(".yaml")
    before = path.read_bytes()
    update_sidecar(model_file, thresholds={"pixel": 0.2, "image": 0.4}, verify=True, backup=True)
    assert path.with_name("screw.yaml.bak").read_bytes() == before
    model_file.write_bytes(b"another model")  # thresholds must not be written beside another model
    with pytest.raises(SidecarError, match="does not match its sidecar"):
        update_sidecar(model_file, thresholds={"pixel": 0.3}, verify=True)
    assert read_sidecar(model_file, verify=False)["thresholds"]["pixel"] == 0.2


def test_precision_and_outputs_round_trip(model_file: Path) -> None:
    """A line graph's outputs and an INT8 graph's precision come back as written; older sidecars are fp32."""
    write_sidecar(model_file, INFO)
    assert "precision" not in read_sidecar(model_file) and precision(read_sidecar(model_file)) == "fp32"
    line = {**INFO, "outputs": ["anomaly_map"], "precision": "int8",
            "quantization": {"calibration": {"images": 64, "sha256": "cd" * 32}}}
    write_sidecar(model_file, line)
    data = read_sidecar(model_file)
    assert data["outputs"] == ["anomaly_map"] and data["precision"] == precision(data) == "int8"
    assert data["quantization"]["calibration"] == {"images": 64, "sha256": "cd" * 32}
    updated = update_sidecar(model_file, thresholds={"pixel": 0.1, "image": 0.2}, verify=True)
    assert updated["precision"] == "int8" and read_sidecar(model_file)["outputs"] == ["anomaly_map"]


def test_opencv_note_names_a_registration_built_on_another_opencv_release() -> None:
    """warpAffine interpolates differently across OpenCV releases: registered pixels, and so the
    scores thresholds were set on, move a little; the runtime says so once, with what to do."""
    import cv2

    here = cv2.__version__
    other = "4.13.0" if not here.startswith("4.13") else "5.1.0"
    built = {"versions": {"opencv": other}, "thresholds": {}}
    note = opencv_note(built, registered=True)
    assert note and other in note and here in note and "calibrate on this machine" in note
    assert opencv_note(built, registered=False) is None                   # no warp, nothing moves
    assert opencv_note({"versions": {"opencv": here}}, registered=True) is None
    assert opencv_note({"versions": {}}, registered=True) is None         # older sidecars record none
    # calibrated on this machine: the thresholds are on its own scores
    calibrated = {**built, "thresholds": {"calibrated_with": {"opencv": here}}}
    assert opencv_note(calibrated, registered=True) is None
    assert "opencv" in versions() and versions()["opencv"] == here

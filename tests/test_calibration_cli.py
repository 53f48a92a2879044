"""python -m calibration.calibrate end to end on the stub model (anomaly_map = brightness): the
sidecar round trip, runtime.inspect reproducing calibration.json's confusion matrix, the
normal-only mode and every bad input of the issue."""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import calibration.calibrate as cc
import runtime.inspect as ri
from core.deployment import Deployment
from core.sidecar import read_sidecar, write_sidecar
from runtime.pipeline import Pipeline
from test_runtime_models import Stub, StubOutputs, make_stub_model
from torchless import run_without_torch

REGISTERED = {"method": "principal_axis", "lighting": "none"}


def hashed_stub(folder: Path, size: int = 16, name: str = "stub", registration: dict | None = None,
                anomaly_scale: float | None = None, module: torch.nn.Module | None = None) -> Path:
    """The stub with a real sidecar (sha256 recorded), as export writes it."""
    if module is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # the legacy exporter's deprecation notices: fine for a stub
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(2, size, size, 1, dtype=torch.uint8),), str(folder / f"{name}.onnx"),
                              input_names=["image"], output_names=list(StubOutputs._fields),
                              dynamic_axes={n: {0: "N"} for n in ("image", *StubOutputs._fields)}, opset_version=17,
                              dynamo=False)
        model = folder / f"{name}.onnx"
        side = {"model": {"family": "stub", "anomaly_map": "attention"}, "outputs": list(StubOutputs._fields),
                "input": {"height": size, "width": size, "channels": 1, "color": "gray"},
                "thresholds": {"pixel": 0.5, "image": 0.5}}
    else:
        model = make_stub_model(folder, size=size, name=name)
        side = yaml.safe_load(model.with_suffix(".yaml").read_text())
        model.with_suffix(".yaml").unlink()
    info = {k: v for k, v in side.items() if k not in ("files", "schema")}
    if registration:
        info["registration"] = registration
    if anomaly_scale:
        info["model"]["anomaly_scale"] = anomaly_scale
    write_sidecar(model, info)
    return model


def bar(rng: np.random.Generator, bright: float, spot: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A bright bar (a part with an axis) at a random angle on a dark ground; `spot`: a brighter
    defect on it, and its mask."""
    img = np.full((64, 64), 30, np.uint8)
    angle = float(rng.uniform(0, 180))
    box = cv2.boxPoints(((32.0, 32.0), (44.0, 9.0), angle)).astype(np.int32)
    cv2.fillPoly(img, [box], int(bright))
    mask = np.zeros_like(img)
    if spot is not None:
        t = float(rng.uniform(-12, 12))
        c = (int(32 + t * np.cos(np.radians(angle))), int(32 + t * np.sin(np.radians(angle))))
        cv2.circle(mask, c, 4, 255, -1)
        img[mask > 0] = int(spot)
    return img, mask


def make_parts(root: Path, n_good: int = 10, n_bad: int = 10, blank: int = 1, seed: int = 0) -> Path:
    """MVTec layout: test/good (with `blank` empty pictures: no part to register), test/spot and
    ground_truth/spot; good and defective brightness overlap, so a threshold makes errors."""
    rng = np.random.default_rng(seed)
    for sub in ("test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        img = np.full((64, 64), 30, np.uint8) if i < blank else bar(rng, rng.uniform(90, 200), None)[0]
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), img)
    for i in range(n_bad):
        img, mask = bar(rng, rng.uniform(90, 150), rng.uniform(140, 255))
        cv2.imwrite(str(root / "test/spot" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/spot" / f"{i:03d}_mask.png"), mask)
    return root


def calibrate(model: Path, data: Path, *extra: str) -> int:
    return cc.main(["--engine", str(model), "--data", str(data), "--threads", "1", "--quiet", "--bootstrap", "200",
                    "--folds", "3", "--worst", "2", *extra])


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    return hashed_stub(tmp_path / "model", registration=REGISTERED)


def inspect_counts(model: Path, folder: Path, out: Path) -> tuple[dict[str, dict[str, int]], dict[str, dict]]:
    """runtime.inspect over `folder`: OK / NG / failed per class, and the rows by file."""
    assert ri.main(["--engine", str(model), "--input", str(folder), "--output", str(out), "--recursive", "--quiet",
                    "--threads", "1"]) == 0
    rows = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    got: dict[str, Counter] = {"good": Counter(), "defective": Counter()}
    for r in rows:
        cls = "good" if r["file"].startswith("good/") else "defective"
        got[cls]["failed" if r["processing"] == "failed" else r["verdict"].lower()] += 1
    return {k: {m: v[m] for m in ("ok", "ng", "failed")} for k, v in got.items()}, {r["file"]: r for r in rows}


def test_inspect_reproduces_the_confusion_matrix_and_names_the_calibration(
        registered: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert calibrate(registered, parts, "--image-rule", "fpr=0.35") == 0
    err = capsys.readouterr().err
    body = json.loads((registered.parent / "stub_calibration" / "calibration.json").read_text())
    cm = body["in_sample"]["confusion"]
    assert cm["good"]["failed"] == 1 and body["registration"]["failed"][0]["file"] == "good/000.png"
    assert "rejected" in body["registration"]["policy"] and "1 failed registration, counted as rejected" in err
    assert cm["good"]["ng"] >= 1 and cm["defective"]["ok"] >= 1 and cm["defective"]["ng"] >= 1  # not trivial
    got, rows = inspect_counts(registered, parts / "test", tmp_path / "inspect")
    assert got == cm
    for r in body["images"]:  # image by image: the same score and verdict
        row = rows[r["file"]]
        assert row["verdict"] == r["verdict"]
        assert r["score"] is None or row["score"] == pytest.approx(r["score"], abs=1e-6)
    out = capsys.readouterr().err
    assert "rule fpr=0.35" in out and f"on {parts.resolve()}" in out and "rule best-iou" in out
    assert {"roc.png", "scores.png", "pixel_threshold.png", "worst.png"} <= {
        p.name for p in (registered.parent / "stub_calibration").iterdir()}


def test_the_sidecar_round_trips_with_its_thresholds(tmp_path: Path, parts: Path) -> None:
    model = hashed_stub(tmp_path / "m")
    side = model.with_suffix(".yaml")
    before = side.read_bytes()
    assert calibrate(model, parts, "--dry-run", "--report", str(tmp_path / "dry")) == 0
    assert side.read_bytes() == before and not Path(f"{side}.bak").exists()
    assert calibrate(model, parts / "test", "--pixel-rule", "f1", "--image-rule", "youden") == 0
    th = read_sidecar(model)["thresholds"]
    body = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert th["pixel"] == body["thresholds"]["pixel"] and th["image"] == body["thresholds"]["image"]
    assert th["rule"] == {"pixel": "f1", "image": "youden"} and th["mode"] == "labelled"
    assert th["data"] == {"path": str((parts / "test").resolve()), "images": 20, "sha256": body["data"]["sha256"]}
    assert set(th["folds"]) >= {"k", "image_fpr", "recall", "precision", "pixel_iou"}
    assert set(th["folds"]["recall"]) == {"mean", "std"} and th["folds"]["k"] == 3
    assert set(th["auroc"]) == {"pixel", "image"} and isinstance(th["best_iou"], float)
    import cv2  # noqa: PLC0415 - the release the thresholds were set under (core.sidecar.opencv_note)

    assert th["calibrated_with"] == {"backend": "onnxruntime", "file": "stub.onnx", "opencv": cv2.__version__}
    assert th["created"]
    assert yaml.safe_load(Path(f"{side}.bak").read_text())["thresholds"] == {"pixel": 0.5, "image": 0.5}
    assert body["sidecar"]["written"] is True
    with Pipeline.open(model, threads=1) as pipe:
        assert (pipe.thresholds.pixel, pipe.thresholds.image) == (th["pixel"], th["image"])
        line = pipe.thresholds.describe(pipe.model.thresholds)
    assert "rule youden" in line and str((parts / "test").resolve()) in line
    # the same data given as the category root or its test/ folder is the same data
    assert calibrate(model, parts, "--dry-run") == 0
    again = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert again["data"]["sha256"] == body["data"]["sha256"]


def test_engines_of_another_stem_keep_their_own_sidecar(tmp_path: Path, parts: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    model = hashed_stub(tmp_path / "m")
    frozen = model.with_name("stub_fp16.onnx")
    shutil.copy(model, frozen)
    info = {k: v for k, v in read_sidecar(model).items() if k not in ("files", "schema", "created", "versions")}
    info["files"] = {frozen.name: {"source": {"file": model.name, "sha256": "x"}}}
    write_sidecar(frozen, info)
    assert calibrate(model, parts, "--folds", "2") == 0
    assert "stub_fp16.onnx was built from stub.onnx" in capsys.readouterr().err
    assert read_sidecar(frozen)["thresholds"] == {"pixel": 0.5, "image": 0.5}  # not reached
    assert calibrate(frozen, parts, "--image-rule", "fpr=0.3") == 0
    assert read_sidecar(frozen)["thresholds"]["rule"]["image"] == "fpr=0.3"
    assert read_sidecar(model)["thresholds"]["rule"]["image"] == "fpr=0.05"


def test_normal_only_data_gives_a_conformal_threshold_and_says_recall_is_unknown(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "line"
    folder.mkdir()
    for i in range(24):
        cv2.imwrite(str(folder / f"{i:03d}.png"), bar(rng, rng.uniform(90, 200), None)[0])
    model = hashed_stub(tmp_path / "m", anomaly_scale=0.05)  # training p99 far below these parts: shifted
    assert calibrate(model, folder, "--image-rule", "fpr=0.1") == 0
    err = capsys.readouterr().err
    assert "normal-only mode" in err and "recall unknown" in err and "look shifted" in err
    body = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert body["mode"] == "normal-only" and body["in_sample"]["recall"] == "unknown"
    assert body["conformal"]["n"] == 24 and body["conformal"]["k"] == 23 and body["conformal"]["bound"] == 2 / 25
    assert body["choice"]["pixel"]["rule"] == "same-as-image" and "no outline" in body["pixel_rule_reason"]
    assert body["in_sample"]["confusion"]["good"]["ng"] == 1
    th = read_sidecar(model)["thresholds"]
    assert th["recall"] == "unknown" and th["mode"] == "normal-only" and th["conformal"]["bound"] == 2 / 25


def test_image_labels_without_masks_calibrate_the_image_on_labels_and_the_pixel_on_normals(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """OK / NG folders without pixel masks (what most factories have) were refused ("defective
    image without masks", exit 1). The image threshold comes from the labelled ROC, the pixel one
    from the good images alone by a stated rule, and the report says which rests on what."""
    data = make_parts(tmp_path / "d", n_good=10, n_bad=10, blank=0)
    shutil.rmtree(data / "ground_truth")
    model = hashed_stub(tmp_path / "m")
    assert calibrate(model, data / "test") == 0
    err = capsys.readouterr().err
    assert "image threshold rests on labels: the ROC of 10 good against 10 defective images (fpr=0.05)" in err
    assert "pixel threshold rests on normals: the 10 good images alone (normal-max fpr=0.05)" in err
    assert "image-labels mode" in err and "recall unknown" not in err
    folder = tmp_path / "m" / "stub_calibration"
    body = json.loads((folder / "calibration.json").read_text())
    assert body["mode"] == "image-labels" and body["basis"]["pixel"].startswith("normals:")
    assert body["rule"] == {"pixel": "normal-max fpr=0.05", "image": "fpr=0.05"}
    assert isinstance(body["in_sample"]["recall"], float) and body["in_sample"]["recall"] > 0
    assert body["aupro"] is None and body["auroc"]["pixel"] is None and body["auroc"]["image"] > 0.5
    assert body["in_sample"]["pixel_iou"] is None and body["pixel_statistics"]["images"] == 10  # the good ones
    # 10 normals cannot bound FPR 0.05: the pixel threshold lies above every good part's maximum
    assert body["in_sample"]["pixel_fpr"] == 0.0 and body["choice"]["pixel"]["method"] == "conformal"
    assert isinstance(body["folds"]["recall"]["mean"], float)
    assert {"roc.png", "scores.png", "worst.png"} <= set(body["plots"]) and "pixel_threshold.png" not in body["plots"]
    th = read_sidecar(model)["thresholds"]
    assert th["mode"] == "image-labels" and th["basis"] == body["basis"] and th["aupro"] is None
    assert th["pixel"] == body["thresholds"]["pixel"] != th["image"]
    assert calibrate(model, data / "test", "--pixel-rule", "fpr=0.01", "--dry-run") == 0
    body = json.loads((folder / "calibration.json").read_text())
    assert body["rule"]["pixel"] == "fpr=0.01" and body["in_sample"]["pixel_fpr"] <= 0.01


def nan_stub() -> torch.nn.Module:
    class NaNStub(Stub):
        def forward(self, image: torch.Tensor) -> StubOutputs:
            out = super().forward(image)
            m = out.anomaly_map
            return out._replace(anomaly_map=(m - m) / (m - m))  # 0 / 0
    return NaNStub()


def test_bad_inputs_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_parts(tmp_path / "d", n_good=4, n_bad=4, blank=0)
    model = hashed_stub(tmp_path / "m")
    side = model.with_suffix(".yaml")

    def fails(code: int, text: str, *args: str, engine: Path = model, folder: Path = data) -> None:
        assert calibrate(engine, folder, *args) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and text in err[-1], err

    fails(2, "--image-rule 'fpr=5': use one of fpr=X, youden, f1, recall=X", "--image-rule", "fpr=5")
    fails(2, "--pixel-rule 'youden': use one of best-iou, fpr=X, f1", "--pixel-rule", "youden")
    fails(2, "--folds 1: at least 2", "--folds", "1")
    fails(2, "not a folder", folder=tmp_path / "nowhere")
    fails(2, "not found", engine=tmp_path / "none.onnx")
    fails(2, "inside the calibration data", "--report", str(data / "test" / "report"))
    mask = data / "ground_truth/spot/001_mask.png"
    cv2.imwrite(str(mask), np.zeros((32, 32), np.uint8))
    fails(1, f"{mask}: mask is 32x32, its image 001.png is 64x64")
    mask.unlink()
    fails(1, f"{mask}: missing mask of")
    shutil.copy(data / "ground_truth/spot/000_mask.png", mask)
    only_bad = tmp_path / "bad_only"
    shutil.copytree(data / "test/spot", only_bad / "spot")
    shutil.copytree(data / "ground_truth", only_bad / "ground_truth")
    fails(1, "no good images", folder=only_bad)
    same = tmp_path / "same"  # every part the same: constant scores
    (same / "good").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(same / "good" / f"{i}.png"), np.full((20, 20), 99, np.uint8))
    fails(1, "separates nothing", folder=same)
    os.chmod(side, 0o444)
    before = side.read_bytes()
    fails(1, f"{side}: read-only")
    assert side.read_bytes() == before and not Path(f"{side}.bak").exists()
    os.chmod(side, 0o644)
    with open(model, "ab") as f:  # the model replaced after export: its thresholds would be stale
        f.write(b"\0")
    fails(1, "does not match its sidecar")
    side.unlink()
    fails(1, "sidecar missing for stub.onnx")
    nan = hashed_stub(tmp_path / "nan", module=nan_stub())
    fails(1, "model output is not finite", engine=nan)
    assert read_sidecar(nan)["thresholds"] == {"pixel": 0.5, "image": 0.5}


def test_counts_typed_wrong_are_usage_errors_before_the_model_runs(tmp_path: Path, parts: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """--seed -1 ran the model over every image and then ended in numpy's traceback (exit 1): every
    count typed wrong is exit 2, one line naming it, before anything runs."""
    model = hashed_stub(tmp_path / "m")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was opened")
    monkeypatch.setattr(cc.Pipeline, "open", never)
    for flag, value in (("--seed", "-1"), ("--threads", "-3"), ("--threads", "0"), ("--bootstrap", "0"),
                        ("--batch", "0"), ("--worst", "-1")):
        assert calibrate(model, parts, flag, value) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag} {value}: at least"), err
    assert not (tmp_path / "m" / "stub_calibration").exists()


def test_thresholds_that_pass_every_defect_are_refused_unless_forced(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Two black frames among the good parts (registration fails: rejected) made FPR <= 5 %
    unreachable; calibration took the threshold above every score (recall 0 %, every defect OK)
    and wrote it, exit 0. A rule no threshold reaches, or a threshold with recall 0, is exit 1 with
    nothing written and the reason in the report, unless --force."""
    data = make_parts(tmp_path / "d", n_good=10, n_bad=6, blank=2)
    model = hashed_stub(tmp_path / "m", registration=REGISTERED)
    side = model.with_suffix(".yaml")
    before = side.read_bytes()
    report = tmp_path / "m" / "stub_calibration" / "calibration.json"
    for extra in ((), ("--dry-run",)):
        assert calibrate(model, data, *extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {data}: no image threshold reaches FPR <= 0.05") and "--force" in err[-1]
        assert "recall 0 %" in err[-1] and "not written" in err[-1]
        assert side.read_bytes() == before and not Path(f"{side}.bak").exists()
        body = json.loads(report.read_text())
        assert body["sidecar"]["written"] is False and len(body["refused"]) == 2
        assert body["choice"]["image"]["met"] is False
    assert calibrate(model, data, "--force") == 0
    assert "written although refused (--force)" in capsys.readouterr().err
    th = read_sidecar(model)["thresholds"]
    assert th["image"] == body["thresholds"]["image"] and len(th["forced"]) == 2
    # a reachable rule whose threshold still passes every defect: the brightest part is a good one
    rng = np.random.default_rng(3)
    bright = tmp_path / "bright"
    for sub in ("good", "spot", "ground_truth/spot"):
        (bright / sub).mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(bright / "good" / f"{i}.png"), bar(rng, 250 if i == 0 else 100, None)[0])
    for i in range(4):
        img, mask = bar(rng, 100, 180)
        cv2.imwrite(str(bright / "spot" / f"{i}.png"), img)
        cv2.imwrite(str(bright / "ground_truth/spot" / f"{i}_mask.png"), mask)
    plain = hashed_stub(tmp_path / "plain")
    assert calibrate(plain, bright, "--image-rule", "fpr=0.05") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "passes every defective part the model scored (0 of 4 NG: recall 0 %)" in err, err
    assert read_sidecar(plain)["thresholds"] == {"pixel": 0.5, "image": 0.5}
    assert calibrate(plain, bright, "--image-rule", "fpr=0.1") == 0  # one good part may be rejected: fine


def deployed_stub(folder: Path) -> Deployment:
    """A deployment whose current version v0001 is the hashed stub, as training.retrain publishes it."""
    model = hashed_stub(folder / "export")
    dep = Deployment(folder / "models")
    staged = dep.stage()
    for f in (model, model.with_suffix(".yaml")):
        shutil.copy(f, staged / f.name)
    dep.switch(dep.publish(staged, {"model": model.name, "parent": None}))
    return dep


def test_a_published_version_is_never_calibrated_in_place_but_into_a_new_version(
        tmp_path: Path, parts: Path, capsys: pytest.CaptureFixture) -> None:
    """--engine DEPLOY/current/X.onnx rewrote the published version's sidecar in place (a rollback
    no longer restored it byte for byte). Refused, with the way to do it: --to-new-version
    calibrates a copy and publishes it as the next version, `current` moving to it."""
    dep = deployed_stub(tmp_path)
    v1 = dep.current()
    before = {p.name: p.read_bytes() for p in v1.path.iterdir()}
    for engine in (dep.root / "current" / "stub.onnx", v1.model, dep.root):
        assert calibrate(engine, parts) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"part of the published version v0001 of {dep.root.resolve()}" in err and "--to-new-version" in err
    assert calibrate(dep.root, parts, "--dry-run", "--report", str(tmp_path / "dry")) == 0  # measuring is fine
    assert calibrate(dep.root, parts, "--to-new-version", "--dry-run") == 2
    assert calibrate(hashed_stub(tmp_path / "loose"), parts, "--to-new-version") == 2
    assert "not the model of a published deployment version" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in v1.path.iterdir()} == before and [v.name for v in dep.versions()] == ["v0001"]
    assert calibrate(dep.root / "current" / "stub.onnx", parts, "--to-new-version", "--image-rule", "fpr=0.2") == 0
    assert "current -> v0002, was v0001" in capsys.readouterr().err
    v2 = dep.current()
    assert v2.name == "v0002" and v2.manifest["parent"] == "v0001" and v2.manifest["calibrated_from"] == "v0001"
    assert {p.name: p.read_bytes() for p in v1.path.iterdir()} == before  # byte for byte
    assert v2.model.read_bytes() == v1.model.read_bytes()
    th = read_sidecar(v2.model)["thresholds"]
    assert th["rule"]["image"] == "fpr=0.2" and (v2.path / th["report"]).is_file()  # relative: survives the rename
    assert v2.manifest["metrics"]["candidate"]["recall"] is not None
    assert not list(dep.root.glob(".staging-*"))
    only_bad = tmp_path / "bad_only"  # a calibration that fails leaves the deployment as it was
    shutil.copytree(parts / "test" / "spot", only_bad / "spot")
    shutil.copytree(parts / "ground_truth", only_bad / "ground_truth")
    assert calibrate(dep.root, only_bad, "--to-new-version") == 1
    assert [v.name for v in dep.versions()] == ["v0001", "v0002"] and dep.current().name == "v0002"
    assert not list(dep.root.glob(".staging-*"))


def test_calibration_keeps_the_sidecars_mode_and_its_link(tmp_path: Path, parts: Path) -> None:
    """The sidecar was replaced by a new file of the umask's mode (an admin's 0640 became 0644), and
    a sidecar that is a symbolic link (kept in a configuration folder) was replaced by a plain
    file: the link and the mode stay, the file the link names gets the thresholds."""
    model = hashed_stub(tmp_path / "m")
    side = model.with_suffix(".yaml")
    os.chmod(side, 0o640)
    assert calibrate(model, parts, "--image-rule", "fpr=0.2") == 0
    assert side.stat().st_mode & 0o777 == 0o640 and read_sidecar(model)["thresholds"]["rule"]["image"] == "fpr=0.2"
    kept = tmp_path / "config" / "stub.yaml"
    kept.parent.mkdir()
    side.rename(kept)
    side.symlink_to(kept)
    assert calibrate(model, parts, "--image-rule", "fpr=0.3") == 0
    assert side.is_symlink() and side.resolve() == kept.resolve()
    assert yaml.safe_load(kept.read_text())["thresholds"]["rule"]["image"] == "fpr=0.3"
    assert kept.stat().st_mode & 0o777 == 0o640


def test_temporaries_a_killed_write_left_are_removed(tmp_path: Path, parts: Path) -> None:
    """A kill between an atomic write's temporary and its rename left .stub.yaml.*.tmp beside the
    sidecar, and nothing ever removed them. Calibration removes the stale ones it finds beside the
    sidecar and its backup, not one a write still under way may own."""
    model = hashed_stub(tmp_path / "m")
    folder = model.parent
    stale = [folder / ".stub.yaml.k2j_x9qa.tmp", folder / ".stub.yaml.bak.0abc_def.tmp"]
    fresh = folder / ".stub.yaml.zz9_8yx7.tmp"
    other = folder / ".other.yaml.k2j_x9qa.tmp"
    for f in (*stale, fresh, other):
        f.write_text("half")
    for f in (*stale, other):
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    assert calibrate(model, parts, "--dry-run", "--report", str(tmp_path / "dry")) == 0
    assert all(f.exists() for f in stale)  # a dry run writes nothing, removes nothing
    assert calibrate(model, parts) == 0
    assert not any(f.exists() for f in stale) and fresh.exists() and other.exists()


def test_a_model_replaced_while_calibrating_is_refused(tmp_path: Path, parts: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    model = hashed_stub(tmp_path / "m")
    side = model.with_suffix(".yaml")
    before = side.read_bytes()
    real = cc.collect

    def then_replace(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real(*args, **kwargs)
        with open(model, "ab") as f:
            f.write(b"\0")
        return got
    monkeypatch.setattr(cc, "collect", then_replace)
    assert calibrate(model, parts) == 1
    assert "does not match its sidecar" in capsys.readouterr().err
    assert side.read_bytes() == before
    body = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert body["sidecar"]["written"] is False


def test_a_model_re_exported_while_calibrating_is_refused(tmp_path: Path, parts: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A re-export replaces the model and its sidecar together: update_sidecar's check (the model
    matches the sidecar) then passed, and the thresholds computed on the previous model were
    written beside the new one. They are written only beside the model calibration opened."""
    model = hashed_stub(tmp_path / "m")
    side = model.with_suffix(".yaml")
    real = cc.collect

    def then_re_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real(*args, **kwargs)
        info = {k: v for k, v in yaml.safe_load(side.read_text()).items() if k not in ("files", "schema")}
        info["thresholds"] = {}
        with open(model, "ab") as f:
            f.write(b"\0")  # another model (another sha256)...
        side.unlink()
        write_sidecar(model, info)  # ...with its own, matching sidecar, as export writes them
        return got
    monkeypatch.setattr(cc, "collect", then_re_export)
    assert calibrate(model, parts) == 1
    assert "re-exported since the new values were computed" in capsys.readouterr().err
    assert read_sidecar(model)["thresholds"] == {}  # the new model's sidecar: untouched
    body = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert body["sidecar"]["written"] is False


REPO = Path(__file__).resolve().parents[1]
SCREW = REPO.parent / "shared" / "data" / "mvtec" / "screw"


@pytest.mark.skipif(not (SCREW / "test").is_dir(), reason="MVTec screw not found")
def test_agreement_on_real_screw_files(tmp_path: Path) -> None:
    data = tmp_path / "screw"
    picks = [("good", "000"), ("good", "002"), ("good", "004"), ("scratch_head", "000"), ("thread_side", "000"),
             ("manipulated_front", "000")]
    for kind, name in picks:
        (data / "test" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(SCREW / "test" / kind / f"{name}.png", data / "test" / kind)
        if kind != "good":
            (data / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(SCREW / "ground_truth" / kind / f"{name}_mask.png", data / "ground_truth" / kind)
    model = hashed_stub(tmp_path / "m", size=64)
    assert calibrate(model, data, "--image-rule", "youden", "--folds", "2", "--worst", "0") == 0
    body = json.loads((tmp_path / "m" / "stub_calibration" / "calibration.json").read_text())
    assert body["pixel_statistics"]["resolution"] == [64, 64]
    got, _ = inspect_counts(model, data / "test", tmp_path / "inspect")
    assert got == body["in_sample"]["confusion"]


def test_calibration_runs_without_torch(tmp_path: Path, parts: Path) -> None:
    """The edge box calibrates where it inspects: no torch import anywhere on the way."""
    model = hashed_stub(tmp_path / "m")  # built here, where torch exists
    result = run_without_torch(f"""
import calibration.calibrate as cc
rc = cc.main(['--engine', {str(model)!r}, '--data', {str(parts)!r}, '--threads', '1', '--quiet', '--folds', '2',
              '--bootstrap', '50', '--worst', '1'])
""")
    assert result == {"rc": 0, "torch": []}
    assert read_sidecar(model)["thresholds"]["rule"] == {"pixel": "best-iou", "image": "fpr=0.05"}

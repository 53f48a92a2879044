"""families.template (build, graph, backend): a training-free model that inspection, calibration and
the camera open like any other (X.npz + X.yaml)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import families.template.build as et
from core.synthetic import part
import runtime.inspect as ri
from core.sidecar import read_sidecar
from runtime.model import ModelError, open_model
from runtime.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
SCREW = REPO.parent / "shared" / "data" / "mvtec" / "screw"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/hole"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), part(rng)[0])
    for i in range(3):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), part(rng)[0])
        cv2.imwrite(str(root / "test/hole" / f"{i:03d}.png"), part(rng, defect="spot")[0])
    return root


def test_build_open_and_inspect(parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "bar.npz"
    assert et.main(["--data", str(parts), "--out", str(out), "--size", "64"]) == 0
    side = read_sidecar(out)
    assert side["model"]["family"] == "template" and side["outputs"] == ["anomaly_map"]
    assert side["registration"]["method"] == "principal_axis" and side["registration"]["samples"] == 12
    assert side["model"]["anomaly_scale"] > 0 and side["input"]["height"] == 64
    with Pipeline.open(out) as pipe:
        good = pipe(sorted((parts / "test/good").glob("*.png")))
        bad = pipe(sorted((parts / "test/hole").glob("*.png")))
        assert all(r.prepared.registration.status == "ok" for r in good + bad)
        # the defect stands out against the nearest registered references, whatever the pose
        assert min(r.inspection.score for r in bad) > max(r.inspection.score for r in good)
        [r] = pipe(sorted((parts / "test/hole").glob("*.png"))[:1], keep_maps=True)
        y, x = np.unravel_index(np.argmax(r.inspection.anomaly_map), r.inspection.anomaly_map.shape)
        hole = cv2.imread(str(sorted((parts / "test/hole").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
        assert 100 < hole[y, x] < 150  # the hottest pixel is on the lighter spot, in the picture's own frame
        with pytest.raises(ModelError, match="needs the model's 'attention' output"):
            Pipeline(pipe.model, pipe.thresholds, explain="both")
    rc = ri.main(["--engine", str(out), "--input", str(parts / "test"), "--recursive", "--output",
                  str(tmp_path / "report"), "--save", "overlay", "--quiet"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "report" / "report.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["processing"] == "done" and r["registration"]["status"] == "ok" for r in rows)
    with pytest.raises(ModelError, match="a template model has no PyTorch backend"):
        open_model(out, backend="torch")


def test_a_part_without_an_axis_falls_back_to_no_registration(mvtec_dir: Path, tmp_path: Path) -> None:
    """The fixture's parts are discs: no dominant axis, so registration is off, with a note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = et.build(mvtec_dir, tmp_path / "disc.npz", size=32)
    assert any("dominant axis" in n or "none" in n for n in r["notes"]), r["notes"]
    assert read_sidecar(tmp_path / "disc.npz")["registration"]["method"] == "none"


def test_usage_and_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        et.main(["--data", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    assert e.value.code == 2
    assert et.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npz")]) == 2
    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "a.png"), np.zeros((8, 8), np.uint8))
    assert et.main(["--data", str(tmp_path / "one"), "--out", str(tmp_path / "x.npz")]) == 1
    assert "at least 2 good images" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("model: {arch: resnet18}\n")
    assert et.main(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "another family than 'template'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.skipif(not (SCREW / "train" / "good").is_dir(), reason="shared screw data absent")
def test_the_screw_config_builds_a_bank(tmp_path: Path) -> None:
    settings = et.from_config(REPO / "configs" / "screw_template.yaml")
    assert settings["size"] == 256 and settings["method"] == "rotation" and settings["lighting"] == "background"


def test_the_onnx_graph_computes_the_banks_map(parts: Path, tmp_path: Path) -> None:
    """--out X.onnx: the graph (run by ONNX Runtime, as TensorRT would) and the numpy bank X.npz
    share one sidecar and give the same scores; the graph passes the TensorRT 10 check."""
    from export.tensorrt import check_graph

    out = tmp_path / "bar.onnx"
    r = et.build(parts, out, size=64)
    assert r["parity"]["rel_err"] < 1e-4 and r["parity"]["nearest_differ"] == 0
    side = read_sidecar(out)
    assert set(side["files"]) == {"bar.onnx", "bar.npz"} and read_sidecar(out.with_suffix(".npz"))
    assert check_graph(out).ok
    files = sorted((parts / "test").rglob("*.png"))
    with Pipeline.open(out) as graph, Pipeline.open(out.with_suffix(".npz")) as bank:
        assert graph.model.backend.name == "onnxruntime" and bank.model.backend.name == "template"
        a = [r.inspection.score for r in graph(files)]
        b = [r.inspection.score for r in bank(files)]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    et.build(parts, out, size=64)  # a rebuild replaces its own pair, never refused as another model's


def test_the_graph_of_a_tolerant_bank_computes_its_map(parts: Path, tmp_path: Path) -> None:
    """With a misalignment tolerance the graph computes the references' local ranges itself
    (MaxPool), equal to the bank's erode / dilate; the sidecar says so."""
    from export.tensorrt import check_graph

    out = tmp_path / "bar.onnx"
    r = et.build(parts, out, size=64, tolerance=1)
    assert r["parity"]["rel_err"] < 1e-4 and r["parity"]["nearest_differ"] == 0
    side = read_sidecar(out)
    assert side["model"]["tolerance"] == 1 and "tolerance 1 px" in side["preprocessing"]["map"]
    assert check_graph(out).ok
    with pytest.raises(SystemExit) as e:
        et.main(["--data", str(parts), "--out", str(tmp_path / "x.onnx"), "--tolerance", "9"])
    assert e.value.code == 2


def test_an_onnx_size_that_is_not_a_multiple_of_64_is_refused_before_anything_is_written(
        parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The graph's search copies are 64 x 64 block means: --size 96 with --out X.onnx used to fit,
    register and write X.npz, then fail (exit 1) leaving the bank without its sidecar; a rebuild
    left the previous sidecar describing another X.npz. It is a usage error, checked first."""
    out = tmp_path / "bar.onnx"
    with pytest.raises(SystemExit) as e:
        et.main(["--data", str(parts), "--out", str(out), "--size", "96"])
    assert e.value.code == 2 and "multiple of 64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 64"):
        et.build(parts, out, size=96)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert et.main(["--data", str(parts), "--out", str(tmp_path / "bar.npz"), "--size", "96"]) == 0  # the bank alone: any size


def test_a_graph_that_fails_its_check_leaves_the_previous_build_whole(parts: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """X.npz was written before the graph was checked: a rebuild whose graph disagreed with the
    bank (nothing written, it said) had already replaced X.npz, which no longer matched X.yaml."""
    import families.template.graph as tg

    out = tmp_path / "bar.onnx"
    et.build(parts, out, size=64)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(tg, "parity", lambda *a, **k: {"rel_err": 1.0, "nearest_differ": 1, "ties": 0, "images": 1})
    with pytest.raises(et.TemplateError, match="not written"):
        et.build(parts, out, size=64, k=2)  # another bank: another X.npz
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    read_sidecar(out.with_suffix(".npz"))  # still the pair the sidecar describes

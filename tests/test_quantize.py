"""export.quantize: a static INT8 line graph that the runtime opens like any model, close to its
fp32 source, calibrated on prepared good parts, with a sidecar that says so and no thresholds."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_mvtec
from core import ort
from core.sidecar import read_sidecar, sidecar_path
from export.check import main as check_main
from export.onnx import export_onnx, read_metadata
from export.quantize import conv_transpose_as_conv, main as quantize_main, phase_kernel, phase_taps, quantize
from runtime.pipeline import Pipeline
from test_export_graph import make_checkpoint

# INT8 against fp32 on the tiny MNIST VAE's blurred error, max |error| / the fp32 maps' range over
# images it was not calibrated on: measured 1e-3 on the calibration images; 3 % is the bound here
INT8_MAP_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(fp32 line graph, its INT8 model, the parts folder) of a tiny MNIST VAE with a blurred-error map."""
    root = tmp_path_factory.mktemp("int8")
    parts = make_mvtec(root / "parts", n_train=12)
    ckpt = make_checkpoint(root / "m.pt", "mnist", anomaly_map="recon_error_blur")
    fp32 = export_onnx(ckpt, root / "m.onnx", outputs=["anomaly_map"])["onnx"]
    assert quantize_main(["--onnx", str(fp32), "--calib-data", str(parts / "train/good"), "--out",
                          str(root / "m.int8.onnx"), "--quiet"]) == 0
    return fp32, root / "m.int8.onnx", parts


def test_int8_model_opens_runs_and_stays_close_to_fp32(line: tuple[Path, Path, Path]) -> None:
    fp32, int8, parts = line
    tests = sorted((parts / "test").rglob("*.png"))
    with Pipeline.open(fp32) as a, Pipeline.open(int8) as b:
        assert b.describe()["precision"] == "int8" and a.describe()["precision"] == "fp32"
        ra, rb = a([str(p) for p in tests]), b([str(p) for p in tests])
    ref = np.stack([r.outputs["anomaly_map"] for r in ra])
    got = np.stack([r.outputs["anomaly_map"] for r in rb])
    span = float(ref.max() - ref.min())
    assert span > 0 and np.isfinite(got).all()
    assert np.abs(got - ref).max() <= INT8_MAP_TOLERANCE * span
    assert 0 < np.abs(got - ref).max()  # it is quantized: not the fp32 graph again
    # scores (the map's max) move less than the map's tolerance too
    assert max(abs(x.inspection.score - y.inspection.score) for x, y in zip(ra, rb)) <= INT8_MAP_TOLERANCE * span
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights: a quarter, plus scales


def test_int8_graph_runs_int8_kernels_and_keeps_the_map_fp32(line: tuple[Path, Path, Path]) -> None:
    _, int8, _ = line
    nodes = onnx.load(str(int8), load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    assert "ConvTranspose" not in ops and ops.count("DepthToSpace") == 2  # the decoder's two, as convolutions
    quantized = {n.input[0] for n in nodes if n.op_type == "DequantizeLinear"}
    assert len(quantized) > 10
    amap = [n for n in nodes if n.name.startswith("/amap/")]
    assert amap and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in amap)
    assert read_metadata(int8)["precision"] == "int8" and read_metadata(int8)["outputs"] == ["anomaly_map"]


def test_int8_sidecar_records_precision_source_and_calibration_and_no_thresholds(line: tuple[Path, Path, Path]) -> None:
    fp32, int8, parts = line
    side, src = read_sidecar(int8), read_sidecar(fp32)
    assert side["precision"] == "int8" and src["precision"] == "fp32"
    assert side["outputs"] == src["outputs"] == ["anomaly_map"] and side["input"] == src["input"]
    assert side["thresholds"] == {} and side["registration"] == src["registration"]
    q = side["quantization"]
    assert q["source"] == {"file": "m.onnx", "sha256": src["files"]["m.onnx"]["sha256"]}
    assert q["calibration"]["images"] == 12 and len(q["calibration"]["sha256"]) == 64
    assert q["conv_transpose_as_conv"] == 2 and q["per_channel"] and q["format"] == "QDQ"
    assert 0 < q["map_error"]["max_over_range"] <= INT8_MAP_TOLERANCE and q["map_error"]["images"] == 12
    assert side["model"]["checkpoint"] == src["model"]["checkpoint"] == "m.pt"
    assert list(side["files"]) == ["m.int8.onnx"]


def test_the_calibration_hash_follows_the_images(line: tuple[Path, Path, Path], tmp_path: Path) -> None:
    fp32, int8, parts = line
    one = tmp_path / "one"
    one.mkdir()
    (one / "000.png").write_bytes((parts / "train/good/000.png").read_bytes())
    r = quantize(fp32, one, tmp_path / "x.int8.onnx")
    assert r["calibration"].sha256 != read_sidecar(int8)["quantization"]["calibration"]["sha256"]
    assert len(r["calibration"].images) == 1


def test_quantize_refuses_a_folder_without_usable_images(line: tuple[Path, Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    fp32, _, _ = line
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    out = tmp_path / "q.int8.onnx"
    with pytest.raises(SystemExit) as e:  # no image file at all: the folder typed is the wrong one
        quantize_main(["--onnx", str(fp32), "--calib-data", str(empty), "--out", str(out)])
    assert e.value.code == 2 and "no image files" in capsys.readouterr().err
    assert quantize_main(["--onnx", str(fp32), "--calib-data", str(broken), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and str(broken) in err
    assert "no usable calibration image (1 image files: 1 unreadable" in err
    assert not out.exists() and not sidecar_path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".quantize_")] == []


def test_quantize_refuses_its_own_output_an_int8_source_and_export_check(line: tuple[Path, Path, Path],
                                                                         capsys: pytest.CaptureFixture) -> None:
    fp32, int8, parts = line
    good = str(parts / "train/good")
    assert quantize_main(["--onnx", str(fp32), "--calib-data", good, "--out", str(fp32)]) == 1
    assert "must not replace its fp32 source" in capsys.readouterr().err
    assert quantize_main(["--onnx", str(int8), "--calib-data", good, "--out", str(int8.with_name("again.onnx"))]) == 1
    assert "already int8" in capsys.readouterr().err
    assert check_main(["--onnx", str(int8), "--checkpoint", str(fp32.with_suffix(".pt"))]) == 1
    err = capsys.readouterr().err
    assert "int8 graph" in err and err.count("\n") == 1


def _conv_transpose_model(cin: int, cout: int, k: int, s: int, p: int, seed: int = 0, **extra: object) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(cin, cout, k, k)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), "B")
    node = helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="/decoder/up", kernel_shape=[k, k],
                            strides=[s, s], pads=[p, p, p, p], **extra)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, cout, None, None])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("k, s, p", [(4, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 1)])
def test_conv_transpose_as_one_convolution_is_the_same_function(k: int, s: int, p: int, tmp_path: Path) -> None:
    """Every k - 2p = s upsampling: the decoders' (4, 2, 1) and other strides and paddings."""
    model = _conv_transpose_model(3, 4, k, s, p)
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    onnx.save(model, str(tmp_path / "a.onnx"))
    want = ort.run(ort.session(tmp_path / "a.onnx", device="cpu"), x)["y"]
    assert conv_transpose_as_conv(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", *["Slice"] * s * s, "Concat", "DepthToSpace"]
    onnx.save(model, str(tmp_path / "b.onnx"))
    got = ort.run(ort.session(tmp_path / "b.onnx", device="cpu"), x)["y"]
    assert got.shape == want.shape == (2, 4, 5 * s, 5 * s)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_conv_transpose_that_is_not_an_exact_upsampling_is_left_alone() -> None:
    for model in (_conv_transpose_model(3, 4, 3, 2, 1), _conv_transpose_model(3, 4, 4, 2, 1, output_padding=[1, 1])):
        assert conv_transpose_as_conv(model) == 0
        assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]
    # k=4, s=2, p=1: phase 0 reads x[m-1], x[m] with taps 3, 1; phase 1 reads x[m], x[m+1] with taps 2, 0
    assert phase_taps(4, 2, 1) == [([3, 1], -1), ([2, 0], 0)]
    kernel, firsts = phase_kernel(np.arange(16.0).reshape(1, 1, 4, 4), 2, 1)
    assert kernel.shape == (4, 1, 2, 2) and firsts == [-1, 0]  # 2x2: the ConvTranspose's own 16 taps, no zeros
    assert kernel[3, 0].tolist() == [[10, 8], [2, 0]] and kernel[0, 0].tolist() == [[15, 13], [7, 5]]
    assert phase_kernel(np.ones((1, 1, 2, 2)), 2, 3) is None  # a window after the output: no padding reaches it


def test_registration_failures_are_skipped_not_calibrated_on(line: tuple[Path, Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import export.quantize as q

    fp32, _, parts = line
    real = q.load

    def load(path: Path, spec: object, **kw: object) -> object:
        p = real(path, spec, **kw)
        if path.name == "000.png":  # as a part the registration cannot find
            p.registration = dataclasses.replace(p.registration, status="no_part", reason="no part in view")
        return p

    monkeypatch.setattr(q, "load", load)
    spec = q.InputSpec(28, 28, 1)
    c = q.calibration_images(parts / "train/good", spec, 64)
    assert len(c.images) == 11 and c.skipped == {"unreadable": 0, "registration_failed": 1}
    assert all(i.shape == (28, 28, 1) and i.dtype == np.uint8 for i in c.images)


def test_camera_bench_compares_models_side_by_side(line: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """bench.camera --compare: bare and camera frames/s of each model at each batch, ratios to --engine."""
    from bench.camera import main as camera_bench

    fp32, int8, _ = line
    assert camera_bench(["--engine", str(fp32), "--compare", str(int8), "--batch", "1", "2", "--threads", "1",
                         "--frames", "4", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [(Path(r["model"]).name, r["batch"], r["precision"]) for r in rows] == [
        ("m.onnx", 1, "fp32"), ("m.int8.onnx", 1, "int8"), ("m.onnx", 2, "fp32"), ("m.int8.onnx", 2, "int8")]
    assert all(r["bare_fps"] > 0 and r["camera_fps"] > 0 and r["threads"] == 1 for r in rows)
    assert [r["bare_speedup"] for r in rows][::2] == [1.0, 1.0]  # --engine against itself
    assert rows[1]["bare_speedup"] == pytest.approx(rows[1]["bare_fps"] / rows[0]["bare_fps"])
    with pytest.raises(SystemExit) as e:  # several settings without --compare: which one would it be?
        camera_bench(["--engine", str(fp32), "--batch", "1", "2", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_outputs_cut_a_line_graph_from_a_full_one(line: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """--outputs anomaly_map of a full graph: the backward's nodes are gone, the map is the line graph's."""
    fp32_line, int8_line, parts = line
    full = export_onnx(fp32_line.with_suffix(".pt"), tmp_path / "full.onnx")["onnx"]
    assert quantize_main(["--onnx", str(full), "--calib-data", str(parts / "train/good"), "--out",
                          str(tmp_path / "cut.int8.onnx"), "--outputs", "anomaly_map", "--quiet"]) == 0
    cut = tmp_path / "cut.int8.onnx"
    side = read_sidecar(cut)
    assert side["outputs"] == ["anomaly_map"] == list(side["output_shapes"]) and not side["model"]["recon"]
    assert read_metadata(cut)["outputs"] == ["anomaly_map"]
    nodes = onnx.load(str(cut), load_external_data=False).graph.node
    assert not [n.name for n in nodes if "/attention/" in n.name or "score_grad" in n.name]
    assert len(nodes) == len(onnx.load(str(int8_line), load_external_data=False).graph.node)
    x = np.random.default_rng(3).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    a = ort.run(ort.session(cut, device="cpu"), x)["anomaly_map"]
    b = ort.run(ort.session(int8_line, device="cpu"), x)["anomaly_map"]
    assert np.array_equal(a, b)  # the same graph, the same calibration: the same numbers
    assert quantize_main(["--onnx", str(full), "--calib-data", str(parts / "train/good"), "--out",
                          str(tmp_path / "x.int8.onnx"), "--outputs", "heatmap"]) == 1


@pytest.mark.slow
def test_retrain_deploys_the_int8_line_graph_gated_on_its_own_calibration(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """training.retrain --int8: the version's model is the INT8 line graph with thresholds of its own."""
    from core.deployment import Deployment
    from core.synthetic import make_parts
    from training.retrain import main as retrain_main

    data = make_parts(tmp_path / "parts", n_train=12, n_good=5, n_defect=3, size=96, defect_gray=80)
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: mnist, size: 28, channels: 1, latent: 8}\n"
                      "train: {epochs: 1, batch_size: 4, lr: 1.0e-3}\n"
                      "inference: {layer: conv2, score: sum_mu, anomaly_map: recon_error_blur, blur_sigma: 1.0}\n")
    rc = retrain_main(["--config", str(config), "--data", str(data), "--deploy", str(tmp_path / "deploy"),
                       "--int8", "--max-steps", "3", "--force"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    version = Deployment(tmp_path / "deploy").current()
    assert version.model.name == "deploy.int8.onnx" and (version.path / "deploy.onnx").is_file()
    side = read_sidecar(version.model)
    assert side["precision"] == "int8" and side["outputs"] == ["anomaly_map"]
    assert side["quantization"]["calibration"]["images"] == 12  # the training images
    assert side["quantization"]["source"]["sha256"] == read_sidecar(version.path / "deploy.onnx")["files"]["deploy.onnx"]["sha256"]
    # calibrated on the INT8 model itself; the fp32 graph beside it was never calibrated, so nothing was copied
    assert isinstance(side["thresholds"]["image"], float) and side["thresholds"]["image"] > 0
    assert read_sidecar(version.path / "deploy.onnx")["thresholds"] == {}
    steps = json.loads((version.path / "deployment.json").read_text())["steps_s"]
    assert list(steps)[:5] == ["train", "export", "check", "quantize", "calibrate"]
    template = tmp_path / "template.yaml"
    template.write_text("model: {arch: template, size: 64, channels: 1, k: 3}\n")
    assert retrain_main(["--config", str(template), "--data", str(data), "--deploy", str(tmp_path / "t"), "--int8"]) == 2
    assert "--int8: a template model is a reference bank" in capsys.readouterr().err

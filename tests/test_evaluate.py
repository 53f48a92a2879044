"""training.evaluate and bench.localization: every requested map scored with the paper's metrics."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from tests.conftest import tiny_config
from training.checkpoint import load_checkpoint
from training.data import load_split
from training.evaluate import main as evaluate_main
from training.train import train


@pytest.fixture
def checkpoint(mvtec_dir: Path, tmp_path: Path) -> Path:
    return train(tiny_config(mvtec_dir), tmp_path / "run", torch.device("cpu"), max_steps=2, progress=False)


def test_evaluate_cli_scores_every_map(checkpoint: Path, mvtec_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", str(checkpoint), "--layer", "layer2", "--layer", "layer3",
                        "--score", "sum_mu", "--score", "difference", "--per-dim", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    for layer in ("layer2", "layer3"):
        for score in ("sum_mu", "difference"):
            assert f"attention/{layer}/{score}/eq2" in m and f"fusion/{layer}/{score}" in m
        assert f"attention/{layer}/per_dim_mean" in m
    for name in ("recon_error", "recon_error_blur", "trivial_darkness"):
        row = m[name]
        assert all(0.0 <= row[k] <= 1.0 for k in ("pixel_auroc", "best_iou", "aupro", "image_auroc")), (name, row)
    # The image-level baselines are the plain numbers they claim to be.
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 64, 1, strict=False)
    brightness = split.images.reshape(len(split), -1).mean(1)
    assert m["trivial_brightness"]["image_auroc"] == pytest.approx(roc_auc_score(split.labels, brightness))
    assert 0.0 <= m["kl"]["image_auroc"] <= 1.0
    assert (out / "grid.png").stat().st_size > 1000
    assert "recon_error_blur" in capsys.readouterr().out


def test_evaluate_cli_errors(checkpoint: Path, mvtec_dir: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        evaluate_main([])
    assert e.value.code == 2
    assert evaluate_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt" in capsys.readouterr().err
    good_only = tmp_path / "good_only"
    shutil.copytree(mvtec_dir, good_only)
    shutil.rmtree(good_only / "test" / "crack")
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(good_only)]) == 1
    assert "error: the test split has 0 defective and 3 good images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--checkpoint", str(checkpoint), "--fpr", "1.5"])
    assert e.value.code == 2
    assert evaluate_main(["--checkpoint", str(checkpoint), "--layer", "fc"]) == 1
    assert "not a feature map" in capsys.readouterr().err
    # a layer named twice is scored once (it used to double the map's rows against the masks)
    assert evaluate_main(["--checkpoint", str(checkpoint), "--layer", "layer3", "--layer", "layer3"]) == 0
    assert capsys.readouterr().out.count("attention/layer3/sum_mu/eq2") == 1


def test_image_labels_without_masks_get_image_metrics_and_skip_pixel_ones(checkpoint: Path, mvtec_dir: Path,
                                                                          tmp_path: Path, capsys):
    """A split labelled OK / NG without pixel masks (an MVTec folder without ground_truth/) was
    refused ("0 defective"): the image-level metrics are reported, the pixel ones skipped with a note."""
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(mvtec_dir, unlabelled)
    shutil.rmtree(unlabelled / "ground_truth")
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(unlabelled), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "note: the test split has no pixel masks (image labels only): pixel AUROC, best IoU and AUPRO are " \
           "skipped" in captured.err
    header = captured.out.splitlines()[0].split()
    assert header == ["map", "image_auroc", "recall_at_fpr"]
    result = json.loads((out / "metrics.json").read_text())
    assert result["anomalous"] == 3 and result["fpr"] == 0.05 and "pixel masks" in result["note"]
    row = result["metrics"]["recon_error_blur"]
    assert "pixel_auroc" not in row and "aupro" not in row and 0 <= row["image_auroc"] <= 1
    assert 0 <= row["recall_at_fpr"] <= 1 and (out / "grid.png").is_file()


def test_recall_at_fpr_by_hand():
    from training.evaluate import recall_at_fpr

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.35, 0.5, 0.6, 0.8])
    assert recall_at_fpr(labels, scores, 0.05) == 0.0       # nothing above the good 0.9
    assert recall_at_fpr(labels, scores, 0.25) == 1.0       # one good (0.9) of four may be rejected


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped idx file of unsigned bytes, as MNIST ships them."""
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_the_mnist_one_class_config_can_be_evaluated(tmp_path: Path, capsys):
    """MNIST has digit labels and no pixel masks: training.evaluate refused it ("no pixel masks"),
    so the shipped configs/mnist_one_class.yaml could not be evaluated at all."""
    from tests.conftest import REPO
    from training.config import load_config, merge

    rng = np.random.default_rng(0)
    digits = np.repeat(np.arange(10), 8)
    images = rng.integers(0, 30, (len(digits), 28, 28))
    for i, d in enumerate(digits):  # a 1 is a bar, every other digit a block: an easy one-class task
        if d == 1:
            images[i, 4:24, 12:16] = 255
        else:
            images[i, 8:20, 8:20] = 200
    root = tmp_path / "mnist"
    root.mkdir()
    write_idx(root / "t10k-images-idx3-ubyte.gz", images)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", digits)
    config = merge(load_config(REPO / "configs" / "mnist_one_class.yaml"),
                   {"data": {"root": str(root)}, "train": {"epochs": 1, "batch_size": 4}})
    ckpt = train(config, tmp_path / "run", torch.device("cpu"), max_steps=1, progress=False)
    assert evaluate_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "eval")]) == 0
    assert "image labels only" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert {"attention/conv2/sum_mu/eq2", "recon_error", "template", "kl"} <= set(metrics)
    assert all("image_auroc" in row and "pixel_auroc" not in row for row in metrics.values())


def test_a_checkpoint_without_fitted_statistics_is_refused(mvtec_dir: Path, tmp_path: Path, capsys):
    ckpt = tmp_path / "run" / "model.pt"
    cfg = tiny_config(mvtec_dir, epochs=2)
    train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=1, progress=False)  # finishes: stats fitted
    ck = load_checkpoint(ckpt)
    ck["stats_ready"] = False  # what an epoch checkpoint of a killed run holds
    torch.save(ck, ckpt)
    assert evaluate_main(["--checkpoint", str(ckpt)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_fusion_divides_each_layer_and_score_by_its_own_scale(checkpoint: Path):
    from training.checkpoint import load_model
    from training.stats import attention_scale, fusion_scales

    model, config = load_model(checkpoint)
    normal = load_split(config["data"], "train", 64, 1, strict=False).images
    scales = fusion_scales(model, config, ["layer2", "layer3"], ["sum_mu", "difference"])
    assert scales[("layer3", "sum_mu")] == pytest.approx(float(model.map_scale[0]))  # fitted at training
    assert scales[("layer2", "difference")] == pytest.approx(float(attention_scale(model, normal, "layer2", "difference")))
    assert len(scales) == 4 and len({round(v, 6) for v in scales.values()}) > 1


def test_localization_bench_on_a_checkpoint(checkpoint: Path, tmp_path: Path, capsys):
    from bench.localization import main as bench_main

    cfg = tmp_path / "parts.yaml"
    cfg.write_text(yaml.safe_dump(load_checkpoint(checkpoint)["config"]))
    assert bench_main(["--config", str(cfg), "--checkpoint", str(checkpoint), "--layers", "layer3",
                       "--variants", "eq2", "--out", str(tmp_path / "bench"), "--quiet", "--threads", "1"]) == 0
    result = json.loads((tmp_path / "bench" / "parts" / "localization.json").read_text())
    assert result["best_map"] in result["metrics"] and result["best_attention"].startswith("attention/layer3/")
    assert np.isclose(result["metrics"]["trivial_darkness"]["darkness_corr"], 1.0)
    assert "trivial_brightness" in capsys.readouterr().out


def test_minmax_rows_span_zero_to_one_per_image():
    from bench.localization import add_minmax

    rng = np.random.default_rng(0)
    maps = {"recon_error": rng.random((3, 8, 8)).astype(np.float32) * [[[1.0]], [[5.0]], [[0.1]]],
            "trivial_darkness": rng.random((3, 8, 8)).astype(np.float32)}
    add_minmax(maps)
    assert set(maps) == {"recon_error", "recon_error/minmax", "trivial_darkness"}
    m = maps["recon_error/minmax"].reshape(3, -1)
    np.testing.assert_allclose(m.min(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(m.max(1), 1.0, atol=1e-6)
    # the order of pixels within an image is kept
    assert (np.argsort(m[1]) == np.argsort(maps["recon_error"][1].ravel())).all()


def test_match_brightness_equalizes_means_and_keeps_labels(mvtec_dir: Path):
    from bench.localization import match_brightness

    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 64, 1, strict=False)
    darker = replace(split, images=(split.images * 0.8).astype(np.uint8))
    matched = match_brightness(darker, split.images)
    means = matched.images.reshape(len(matched), -1).mean(1)
    assert np.allclose(means, split.images.mean(), atol=1.0)  # uint8 rounding and clipping at 255
    assert matched.images.dtype == np.uint8 and (matched.labels == split.labels).all()
    assert matched.masks is split.masks


def test_mnist_bar_lift_on_hand_made_digits():
    """The fig. 4 measure: a map on the band (top 30 % of the digit's rows) lifts by 1 / band share."""
    from bench.mnist_attention import bar_band, bar_lift

    img = np.zeros((1, 10, 10, 1), np.uint8)
    img[0, 2:8, 3:7] = 255                     # a block on rows 2-7: 6 rows, band = 2 rows (2, 3)
    band = bar_band(img)
    assert band[0].any(1).nonzero()[0].tolist() == [2, 3]
    on_band = band.astype(np.float32)
    assert bar_lift(on_band, band) == pytest.approx(1 / 0.2)   # band = 20 of 100 pixels
    assert bar_lift(np.ones((1, 10, 10), np.float32), band) == pytest.approx(1.0)
    assert bar_lift(-on_band + 1, band) == pytest.approx(0.0)  # all mass off the band


def test_seed_summary_means_spread_and_errors(tmp_path: Path, capsys):
    from bench.seeds import main as seeds_main

    for seed, (auroc, iou, aupro) in enumerate([(0.965, 0.10, 0.85), (0.985, 0.20, 0.87)]):
        m = {"pixel_auroc": auroc, "best_iou": iou, "aupro": aupro, "image_auroc": 0.5}
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "localization.json").write_text(json.dumps({"config": f"s{seed}", "metrics": {"ssim_error": m}}))
    out = tmp_path / "seeds.json"
    assert seeds_main(["--group", "C", str(tmp_path / "s0"), str(tmp_path / "s1"), "--maps", "ssim_error",
                       "--out", str(out)]) == 0
    row = json.loads(out.read_text())["C"]["ssim_error"]
    assert row["pixel_auroc"]["mean"] == pytest.approx(0.975)
    assert row["best_iou"]["min"] == pytest.approx(0.10) and row["best_iou"]["max"] == pytest.approx(0.20)
    # 0.975 >= 0.975; 0.15 < 0.40; 0.86 < 0.93; 0.5 < 0.95
    assert row["targets_met"] == {"pixel_auroc": True, "best_iou": False, "aupro": False, "image_auroc": False}
    assert seeds_main(["--group", "C", str(tmp_path / "nowhere")]) == 1
    assert "nowhere/localization.json: not found" in capsys.readouterr().err
    assert seeds_main(["--group", "C", str(tmp_path / "s0"), "--maps", "fusion"]) == 1
    assert "map 'fusion' is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        seeds_main(["--group", "C"])
    assert e.value.code == 2
    kl = tmp_path / "kl"
    kl.mkdir()
    (kl / "localization.json").write_text(json.dumps({"config": "kl", "metrics": {"kl": {"image_auroc": 0.6}}}))
    # an image score is summarized over its image AUROC alone; a map missing a pixel metric is an error
    assert seeds_main(["--group", "K", str(kl), "--maps", "kl", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["K"]["kl"]) == {"image_auroc", "targets_met"}
    (kl / "localization.json").write_text(json.dumps({"config": "kl", "metrics": {"m": {"image_auroc": 0.6,
                                                                                          "aupro": 0.5}}}))
    assert seeds_main(["--group", "K", str(kl), "--maps", "m"]) == 1
    assert "'m' lacks metrics" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a second group of the same name would replace the first
        seeds_main(["--group", "C", str(tmp_path / "s0"), "--group", "C", str(tmp_path / "s1")])
    assert e.value.code == 2 and "names must differ" in capsys.readouterr().err


def test_residual_attention_bench_on_a_checkpoint(checkpoint: Path, tmp_path: Path, capsys):
    from bench.residual_attention import main as residual_main

    assert residual_main(["--checkpoint", str(checkpoint), "--layers", "layer1", "--out", str(tmp_path),
                          "--threads", "1"]) == 0
    result = json.loads((tmp_path / f"residual_attention_{checkpoint.parent.name}.json").read_text())
    names = set(result["metrics"])
    assert {"recon_error_blur", "ssim_error", "trivial_darkness", "residual/layer1/uniform",
            "residual/layer1/sum_mu/eq2", "residual/layer1/difference/weighted"} <= names
    assert all(0 <= m["aupro"] <= 1 for m in result["metrics"].values())
    assert "residual/layer1/uniform" in capsys.readouterr().out
    assert residual_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 1

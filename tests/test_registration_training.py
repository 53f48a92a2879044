"""Registration in training and evaluation: the fitted spec travels in the checkpoint, every layer
prepares a file into the same model input, and maps are scored where the camera saw the part."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from core.images import read_image, resize_to_model
from core.prepare import InputSpec, prepare
from core.registration import RegistrationSpec, warp_back
from tests.conftest import MNIST, tiny_config
from training.checkpoint import load_checkpoint, load_model
from training.config import DEFAULTS, merge, registration_request
from training.data import load_split, registration_of
from training.train import train

REQUEST = {"method": "principal_axis", "lighting": "background"}


def screw(rng: np.random.Generator, size: int = 128, defect: bool = False, ground: int = 190) -> tuple[np.ndarray, np.ndarray]:
    """A dark bar with a wider head at one end on a bright ground, at a random angle and place
    (a screw as registration sees it), and its defect mask (a bright spot on the shaft)."""
    img = np.full((size, size), ground, np.uint8)
    a = math.radians(rng.uniform(0, 360))
    c = size / 2 + rng.uniform(-6, 6, 2)
    d = np.array([math.cos(a), -math.sin(a)])
    n = np.array([-d[1], d[0]])

    def quad(s0: float, s1: float, half: float) -> np.ndarray:
        return np.array([c + s0 * d + half * n, c + s1 * d + half * n, c + s1 * d - half * n, c + s0 * d - half * n])

    length = 0.55 * size
    for q in (quad(-length / 2, length / 2, 0.05 * size), quad(-length / 2, -length / 2 + 0.1 * size, 0.11 * size)):
        cv2.fillPoly(img, [np.round(q * 16).astype(np.int32)], 50, cv2.LINE_AA, 4)
    mask = np.zeros_like(img)
    if defect:
        p = c + rng.uniform(0, length / 3) * d
        cv2.circle(mask, (int(p[0]), int(p[1])), size // 24, 255, -1)
        img[mask > 0] = 230
    return (img.astype(int) + rng.integers(-4, 5, img.shape)).clip(0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def screws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MVTec layout: 16 training screws, 3 good and 3 defective test screws (the good ones lit
    darker, as the shared screw half is), and one empty picture that registration must refuse."""
    root = tmp_path_factory.mktemp("screws")
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True)
    for i in range(16):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), screw(rng)[0])
    for i in range(3):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), screw(rng, ground=170)[0])
        img, mask = screw(rng, defect=True)
        cv2.imwrite(str(root / "test/spot" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/spot" / f"{i:03d}_mask.png"), mask)
    cv2.imwrite(str(root / "test/good" / "empty.png"), np.full((128, 128), 190, np.uint8))
    return root


def registered_config(root: Path, **train_over: object) -> dict:
    return merge(tiny_config(root, **train_over),
                 {"registration": REQUEST, "data": {"augment": {"rotate": 3, "hflip": False, "vflip": False}}})


@pytest.fixture(scope="module")
def registered(screws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(registered_config(screws), tmp_path_factory.mktemp("reg") / "run", torch.device("cpu"),
                 max_steps=2, progress=False)


def test_training_fits_the_registration_and_stores_it_in_the_checkpoint(registered: Path, screws: Path) -> None:
    ck = load_checkpoint(registered)
    stored = ck["config"]["registration"]
    assert stored["method"] == "principal_axis" and stored["lighting"] == "background"
    assert stored["samples"] == 16 and stored["background"] == pytest.approx(190, abs=3) and stored["profile"]
    assert ck["registration_request"] == REQUEST
    model, config = load_model(registered)
    spec = registration_of(config)
    split = load_split(config["data"], "train", 64, 1, strict=True, registration=spec)
    assert split.registration == spec and [r.status for r in split.registrations] == ["ok"] * 16
    # every training input is core.prepare's registered input of its file, not the plain resize
    for name, x in zip(split.names, split.images):
        img = read_image(screws / "train" / name, 1)
        np.testing.assert_array_equal(x, prepare(img, InputSpec(64, 64, 1, registration=spec)).input)
        assert not np.array_equal(x, resize_to_model(img, 64, 64))
    # the normal-data statistics were fitted on those registered inputs
    with torch.no_grad():
        o = model(torch.from_numpy(split.images))
    torch.testing.assert_close(model.normal_mu, o.mu.mean(0), rtol=1e-5, atol=1e-6)


def test_a_file_gives_the_same_registered_input_in_training_export_and_runtime(registered: Path, screws: Path,
                                                                                tmp_path: Path) -> None:
    from export.check import load_images
    from export.onnx import export_onnx
    from runtime.pipeline import Pipeline

    onnx_path = tmp_path / "screw.onnx"
    export_onnx(registered, onnx_path)
    sidecar = yaml.safe_load(onnx_path.with_suffix(".yaml").read_text())
    config = load_checkpoint(registered)["config"]
    assert sidecar["registration"] == config["registration"]      # the fitted spec, not the request
    spec = InputSpec.from_mapping(sidecar["input"], sidecar["registration"])
    test = load_split(config["data"], "test", 64, 1, strict=False, registration=registration_of(config))
    one = tmp_path / "one"
    one.mkdir()
    name = "spot/001.png"
    (one / "001.png").write_bytes((screws / "test" / name).read_bytes())
    from_training = test.images[test.names.index(name)]
    from_check = load_images(one, spec, 1)[0]
    with Pipeline.open(onnx_path) as pipe:
        from_runtime = pipe.load(screws / "test" / name).input
        [result] = pipe(screws / "test" / name)
    with Pipeline.open(registered) as pipe:            # the PyTorch backend reads the checkpoint's spec
        from_checkpoint = pipe.load(screws / "test" / name).input
    np.testing.assert_array_equal(from_training, from_check)
    np.testing.assert_array_equal(from_training, from_runtime)
    np.testing.assert_array_equal(from_training, from_checkpoint)
    assert result.prepared.registration.status == "ok"


def test_the_test_split_keeps_masks_where_the_camera_saw_the_part(registered: Path, screws: Path) -> None:
    config = load_checkpoint(registered)["config"]
    test = load_split(config["data"], "test", 64, 1, strict=False, registration=registration_of(config))
    # the empty picture has no part to turn: kept out of the maps, listed with its status
    assert [(Path(f).name, why.split(":")[0]) for f, why in test.skipped] == [("empty.png", "registration no_part")]
    assert len(test) == 6 and len(test.registrations) == 6 and test.masks.shape == (6, 64, 64)
    for name, m in zip(test.names, test.masks):
        if name.startswith("spot/"):
            mask = read_image(screws / "ground_truth" / "spot" / name.replace(".png", "_mask.png").split("/")[1], 1)
            np.testing.assert_array_equal(m, resize_to_model(mask, 64, 64)[:, :, 0] > 127)
    # warped back, the registered input lies on the original picture (lit to the training gray)
    back = test.to_original(test.images[..., 0].astype(np.float32))
    for i, (name, r) in enumerate(zip(test.names, test.registrations)):
        np.testing.assert_array_equal(back[i], warp_back(test.images[i, :, :, 0], r, 64, 64))
        plain = resize_to_model(read_image(screws / "test" / name, 1), 64, 64)[:, :, 0] * r.gain
        inside = warp_back(np.ones((64, 64), np.float32), r, 64, 64) > 0.99
        assert np.abs(back[i] - plain)[inside].mean() < 12, name
    # darker good parts come out at the training gray: brightness no longer tells them apart
    means = test.images.reshape(len(test), -1).mean(1)
    assert abs(means[test.labels == 0].mean() - means[test.labels == 1].mean()) < 5


def test_resume_keeps_the_fitted_spec_and_refuses_another_request(screws: Path, tmp_path: Path) -> None:
    cfg = registered_config(screws, epochs=2)
    straight = train(cfg, tmp_path / "a", torch.device("cpu"), progress=False)
    per_epoch = int(load_checkpoint(straight)["history"][0]["step"])
    train(cfg, tmp_path / "b", torch.device("cpu"), max_steps=per_epoch, progress=False)
    resumed = train(cfg, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["config"]["registration"] == b["config"]["registration"]
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0)
    other = merge(cfg, {"registration": {"lighting": "none"}})
    with pytest.raises(ValueError, match=r"registration\.lighting: 'background' -> 'none'"):
        train(other, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)


def test_a_part_without_an_axis_falls_back_to_none_with_a_warning(mvtec_dir: Path, tmp_path: Path, capsys) -> None:
    cfg = merge(tiny_config(mvtec_dir), {"registration": {"method": "principal_axis", "lighting": "none"}})
    ckpt = train(cfg, tmp_path / "round", torch.device("cpu"), max_steps=1, progress=False)
    assert "no dominant axis" in capsys.readouterr().err
    ck = load_checkpoint(ckpt)
    assert ck["config"]["registration"]["method"] == "none" and ck["registration_request"]["method"] == "principal_axis"
    # the same request resumes: the fallback is the fit's result, not a change of the experiment
    train(cfg, tmp_path / "round", torch.device("cpu"), resume=True, progress=False)
    split = load_split(ck["config"]["data"], "train", 64, 1, strict=True, registration=registration_of(ck["config"]))
    for name, x in zip(split.names, split.images):   # method none, lighting none: the plain resize
        np.testing.assert_array_equal(x, resize_to_model(read_image(mvtec_dir / "train" / name, 1), 64, 64))


def test_without_registration_inputs_and_checkpoints_are_as_before(mvtec_dir: Path, tmp_path: Path) -> None:
    assert DEFAULTS["registration"] == {"method": "none", "lighting": "none"}
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert split.registrations is None and not split.registration.active
    for name, x in zip(split.names, split.images):
        np.testing.assert_array_equal(x, resize_to_model(read_image(mvtec_dir / "test" / name, 1), 32, 32))
    maps = np.random.default_rng(0).random((len(split), 32, 32)).astype(np.float32)
    assert split.to_original(maps) is maps
    ckpt = train(tiny_config(mvtec_dir), tmp_path / "plain", torch.device("cpu"), max_steps=1, progress=False)
    ck = load_checkpoint(ckpt)
    assert ck["config"]["registration"] == {"method": "none", "lighting": "none"}
    old = {k: v for k, v in ck["config"].items() if k != "registration"}   # a checkpoint older than registration
    assert registration_of(old) == RegistrationSpec()


def test_the_registration_section_is_checked() -> None:
    assert registration_request({"registration": {"method": "principal_axis"}}) == {"method": "principal_axis",
                                                                                      "lighting": "none"}
    with pytest.raises(ValueError, match="registration method: 'pca'"):
        registration_request({"registration": {"method": "pca"}})
    with pytest.raises(ValueError, match=r"registration\.zoom: unknown key"):
        registration_request({"registration": {**REQUEST, "zoom": 0.5}}, strict=True)
    with pytest.raises(ValueError, match="MNIST digits are centred"):
        load_split({"format": "mnist", "root": str(MNIST)}, "train", 28, 1, strict=True,
                   registration=RegistrationSpec("principal_axis"))


def test_evaluation_warps_maps_back_and_scores_the_template(registered: Path, tmp_path: Path, capsys) -> None:
    from bench.localization import main as bench_main
    from training.evaluate import main as evaluate_main

    assert evaluate_main(["--checkpoint", str(registered), "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["registration"]["method"] == "principal_axis" and result["images"] == 6
    assert [Path(s["file"]).name for s in result["skipped"]] == ["empty.png"]
    m = result["metrics"]
    for name in ("template", "template+recon_error_blur", "template+ssim_error", "recon_error_blur", "trivial_darkness"):
        assert {"image_auroc_top1", "image_auroc_area", "aupro"} <= set(m[name]), name
    assert "registration no_part" in capsys.readouterr().err
    cfg = tmp_path / "screws.yaml"
    cfg.write_text(yaml.safe_dump(load_checkpoint(registered)["config"]))
    assert bench_main(["--config", str(cfg), "--checkpoint", str(registered), "--layers", "layer3", "--variants", "eq2",
                       "--sigmas", "2", "--out", str(tmp_path / "bench"), "--quiet", "--threads", "1"]) == 0
    bench = json.loads((tmp_path / "bench" / "screws" / "localization.json").read_text())
    assert {"template", "recon_error_blur_s2", "fusion/layer3/sum_mu"} <= set(bench["metrics"])
    assert not bench["best_vae_map"].startswith("template") and len(bench["skipped"]) == 1
    assert "image_auroc_area" in bench["metrics"]["recon_error_blur_s2"]   # derived maps get a normal threshold too

"""families.discriminative: synthetic defects, a tiny net trained for a few steps, its ONNX graph
checked against PyTorch, opened and run by the runtime like any model, and built by retrain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from core.synthetic import make_parts
from families.discriminative import synth

pytest.importorskip("torch")


def test_a_synthetic_defect_lies_in_its_mask_on_the_part() -> None:
    rng = np.random.default_rng(0)
    parts = np.random.default_rng(1).integers(60, 200, (4, 64, 64, 3)).astype(np.uint8)
    where = np.zeros((64, 64), np.float32)
    where[16:48, 16:48] = 1
    for _ in range(20):
        x, mask = synth.defect(rng, parts[0], parts, where)
        assert x.dtype == np.uint8 and x.shape == parts[0].shape and set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() >= synth.MIN_PIXELS and not mask[where == 0].any()
        changed = np.abs(x.astype(int) - parts[0]).max(axis=2) > 0
        # the soft edge reaches a pixel or two beyond the region, never further
        import cv2
        near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert not (changed & ~near).any()
    a = synth.defect(np.random.default_rng(5), parts[1], parts, where)
    b = synth.defect(np.random.default_rng(5), parts[1], parts, where)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])      # deterministic given the generator


def test_the_part_region_is_the_part_or_everything() -> None:
    imgs = np.full((3, 32, 32, 1), 20, np.uint8)
    imgs[:, 8:24, 8:24] = 200
    region = synth.part_region(imgs, margin=1)
    assert region[16, 16] == 1 and region[0, 0] == 0 and region[7, 16] == 1 and region[5, 16] == 0
    assert synth.part_region(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 1)).astype(np.uint8)).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from families.discriminative.train import main

    root = tmp_path_factory.mktemp("disc")
    make_parts(root / "data", n_train=12, n_good=3, n_defect=3, size=96)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"family": "discriminative", "size": 64, "channels": 1, "k": 3,
                                             "width": 4, "sigma": 1.0, "tolerance": 1},
                                   "registration": {"method": "principal_axis", "lighting": "background"},
                                   "data": {"root": str(root / "data")},
                                   "train": {"steps": 6, "batch_size": 4, "seed": 0}}))
    assert main(["--config", str(cfg), "--out", str(root / "run"), "--quiet"]) == 0
    return root


def test_training_writes_a_checkpoint_with_its_bank_and_fitted_registration(trained: Path) -> None:
    from training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained / "run" / "model.pt")
    assert ckpt["format"] == "discriminative/1" and tuple(ckpt["bank"].shape) == (12, 64, 64, 1)
    assert ckpt["config"]["registration"]["method"] == "principal_axis" and ckpt["config"]["registration"]["samples"] == 12
    assert len(ckpt["history"]) == 6 and all(np.isfinite(ckpt["history"])) and 0 < ckpt["anomaly_scale"] <= 1


def test_the_exported_graph_equals_pytorch_and_the_runtime_runs_it(trained: Path) -> None:
    from families.discriminative.export import main
    from runtime.pipeline import Pipeline

    out = trained / "model.onnx"
    assert main(["--checkpoint", str(trained / "run" / "model.pt"), "--out", str(out)]) == 0
    side = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert side["model"]["family"] == "discriminative" and side["outputs"] == ["anomaly_map"]
    assert side["export"]["parity"]["rel_err"] < 1e-4 and side["registration"]["method"] == "principal_axis"
    assert side["model"]["tolerance"] == 1     # the references' ranges computed in the graph, as in training
    pipe = Pipeline.open(out, warmup=False)
    results = pipe(sorted((trained / "data" / "test").glob("*/*.png")))
    assert len(results) == 9 and all(r.error is None for r in results)
    scores = np.array([r.inspection.score for r in results])
    assert np.all((scores >= 0) & (scores <= 1))


def test_the_blend_variant_adds_the_template_map_each_over_its_normal_scale(trained: Path) -> None:
    """The same checkpoint exported again with --blend on (the family's variant, no retraining):
    the graph's map is the net's map / its normal p99 + the template family's own map / its
    normal p99, computed here independently from the numpy bank and the plain graph."""
    import importlib

    from core.prepare import InputSpec, load
    from core.registration import RegistrationSpec
    from families import FAMILIES, BuildRequest
    from families.discriminative.export import load as load_checkpoint
    from core.metrics import NORMAL_QUANTILE
    from families.template.bank import TemplateBank
    from runtime.pipeline import Pipeline

    plain = trained / "plain" / "model.onnx"
    plain.parent.mkdir(exist_ok=True)
    (plain.parent / "model.pt").write_bytes((trained / "run" / "model.pt").read_bytes())
    from families.discriminative.export import main
    assert main(["--checkpoint", str(plain.parent / "model.pt"), "--out", str(plain)]) == 0
    stage = trained / "blend"
    stage.mkdir(exist_ok=True)
    cfg = yaml.safe_load((trained / "cfg.yaml").read_text())
    cfg["model"]["blend"] = True
    (stage / "train.yaml").write_text(yaml.safe_dump(cfg))

    def run(name: str, module: str, args: list[str], **_: object) -> None:
        assert importlib.import_module(module).main(args) == 0
    out = FAMILIES["discriminative"].variant("blend")(BuildRequest(stage / "train.yaml", stage / "model.onnx", None, [], run),
                                                      plain)
    side = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert side["model"]["blend"] is True and side["export"]["parity"]["rel_err"] < 1e-4
    assert (stage / "model.pt").is_file()            # the deployment keeps the weights beside the graph

    _, bank, ckpt, _ = load_checkpoint(stage / "model.pt")
    template = TemplateBank(bank.images, bank.k, tolerance=bank.tolerance)
    t_scale = np.median(np.quantile(template.leave_one_out().reshape(len(bank.images), -1), NORMAL_QUANTILE, axis=1))
    spec = InputSpec(64, 64, 1, "gray", RegistrationSpec.from_mapping(ckpt["config"]["registration"]))
    files = sorted((trained / "data" / "test").glob("*/*.png"))
    x = np.stack([load(f, spec, keep_image=False).input for f in files])

    def maps(model: Path) -> np.ndarray:
        with Pipeline.open(model, warmup=False) as pipe:
            return np.asarray(pipe.model(x, ("anomaly_map",))["anomaly_map"])
    expected = maps(plain) / float(ckpt["anomaly_scale"]) + template.anomaly_map(x) / t_scale
    np.testing.assert_allclose(maps(out), expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    assert side["model"]["anomaly_scale"] > 0


def test_export_refuses_what_is_not_its_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from families.discriminative.export import main

    torch.save({"config": {}, "model": {}}, tmp_path / "vae.pt")
    assert main(["--checkpoint", str(tmp_path / "vae.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "not a discriminative checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")])
    assert e.value.code == 2


def test_settings_refuse_values_that_cannot_work() -> None:
    from families.discriminative.train import settings

    for model, words in (({"size": 100}, "model.size"), ({"channels": 2}, "model.channels"),
                         ({"width": 0}, "model.width"), ({"tolerance": 9}, "model.tolerance"),
                         ({"blend": "yes"}, "model.blend")):
        with pytest.raises(ValueError, match=words):
            settings({"model": model})
    with pytest.raises(ValueError, match="train.steps"):
        settings({"train": {"steps": 0}})


def test_retrain_builds_and_deploys_the_family(trained: Path) -> None:
    from core.deployment import Deployment
    from training.retrain import main

    deploy = trained / "deploy"
    rc = main(["--config", str(trained / "cfg.yaml"), "--data", str(trained / "data"), "--deploy", str(deploy),
               "--max-steps", "2", "--force"])
    assert rc == 0
    version = Deployment(deploy).current()
    assert version is not None and (version.path / "model.pt").is_file()
    side = yaml.safe_load(version.model.with_suffix(".yaml").read_text())
    assert side["model"]["family"] == "discriminative" and side["thresholds"]
    logs = {p.name for p in (version.path / "logs").iterdir()}
    assert {"train.log", "export.log", "calibrate.log"} <= logs


def test_the_pytorch_backend_refuses_another_family(trained: Path) -> None:
    from runtime.model import ModelError, open_model

    out = trained / "model.onnx"
    if not out.is_file():
        from families.discriminative.export import main
        assert main(["--checkpoint", str(trained / "run" / "model.pt"), "--out", str(out)]) == 0
    with pytest.raises(ModelError, match="a discriminative model is checked against PyTorch when it is exported"):
        open_model(out, backend="torch")

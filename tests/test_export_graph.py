"""export.graph: the explicit backward equals autograd (training.inference.reference_outputs)."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch

from export.graph import ExportError, ExportModule, build_export_module, export_layers, output_shapes, score_cotangents
from training.attention import latent_score
from training.checkpoint import load_model_hashed, save_checkpoint
from training.config import DEFAULTS, merge
from training.inference import inference_settings, reference_outputs
from training.models import VAE, build_model

SIZES = {"mnist": 28, "ucsd": 100, "resnet18": 64}
INFERENCE = {"mnist": {"layer": "conv2", "anomaly_map": "attention", "blur_sigma": 1.0},
             "ucsd": {"layer": "conv3", "anomaly_map": "recon_error_blur", "blur_sigma": 2.0},
             "resnet18": {"layer": "layer3", "anomaly_map": "recon_error_blur", "blur_sigma": 2.0}}


def make_model(arch: str, latent: int = 8, seed: int = 0) -> VAE:
    """A random model whose BatchNorm statistics and normal-data buffers are not the identity,
    so that every term of the backward (BN scale, Eq. 4 statistics, fusion scales) is exercised."""
    torch.manual_seed(seed)
    m = build_model({"arch": arch, "size": SIZES[arch], "channels": 1, "latent": latent})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.uniform_(-0.1, 0.1, generator=g)
        bns = [mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        if bns:  # one near-dead channel, as trained models have, where eps = 1e-5 matters (a factor sqrt(2))
            bns[-1].running_var[0] = 1e-5
        m.normal_mu.normal_(generator=g)
        m.normal_var.uniform_(0.5, 2.0, generator=g)
        m.map_scale.uniform_(0.5, 2.0, generator=g)
    return m.eval()


def make_checkpoint(path: Path, arch: str, **inference: object) -> Path:
    """A checkpoint of make_model(arch) with an `inference` section (no training needed for parity)."""
    cfg = merge(DEFAULTS, {"model": {"arch": arch, "size": SIZES[arch], "channels": 1, "latent": 8},
                           "inference": {**INFERENCE[arch], **inference}})
    model = make_model(arch)
    save_checkpoint(path, model, cfg)
    return path


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def assert_close_to_reference(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rel: float = 1e-4) -> None:
    assert list(out) == list(ref) or set(out) == set(ref)
    for name, r in ref.items():
        o = out[name]
        assert o.shape == r.shape, name
        span = float(r.max() - r.min()) or float(r.abs().max()) or 1.0
        err = float((o - r).abs().max())
        assert err <= rel * span, f"{name}: max err {err:.3g} > {rel:g} x range {span:.3g}"


CASES = [("mnist", "conv2"), ("mnist", "conv1"), ("ucsd", "conv3"), ("ucsd", "conv2"),
         ("resnet18", "layer4"), ("resnet18", "layer3"), ("resnet18", "layer2")]


@pytest.mark.parametrize("arch,layer", CASES)
@pytest.mark.parametrize("score,per_dim", [("sum_mu", False), ("sum_mu", True), ("difference", True)])
def test_explicit_backward_matches_autograd(arch: str, layer: str, score: str, per_dim: bool) -> None:
    model = make_model(arch)
    img = images(3, SIZES[arch])
    module = ExportModule(model, layer, score, "fusion", 2.0, per_dim=per_dim)
    out = module(img)._asdict()
    ref = reference_outputs(model, img, layer, score, "fusion", 2.0, per_dim=per_dim)
    assert_close_to_reference(out, ref)
    if arch == "resnet18" and layer != "layer4" or arch != "resnet18":
        # image-dependent gradients (not the constant a frozen trace would give)
        assert not torch.allclose(out["gradients"][0], out["gradients"][1])


def test_batch_one_and_per_sample_independence() -> None:
    model = make_model("resnet18")
    img = images(3, 64)
    module = ExportModule(model, "layer3", "difference", "attention", 1.0)
    batch = module(img)
    for i in range(3):
        one = module(img[i:i + 1])
        assert torch.allclose(one.gradients[0], batch.gradients[i], atol=1e-6, rtol=1e-4)


def test_score_cotangents_match_autograd_of_latent_score() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    nmu, nvar = torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.5
    for score in ("sum_mu", "difference"):
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        dm, dl = torch.autograd.grad(latent_score(m, lv, score, nmu, nvar).sum(), (m, lv), allow_unused=True)
        ours_m, ours_l = score_cotangents(mu, logvar, score, nmu, nvar)
        assert torch.allclose(ours_m, dm, atol=1e-6)
        if score == "sum_mu":
            assert ours_l is None and (dl is None or not dl.any())
        else:
            assert torch.allclose(ours_l, dl, atol=1e-6)
    with pytest.raises(ExportError, match="unknown score"):
        score_cotangents(mu, logvar, "nope", nmu, nvar)


def test_output_names_follow_the_configuration() -> None:
    model = make_model("mnist")
    assert ExportModule(model, "conv2", "sum_mu", "attention", 1.0).output_names == (
        "mu", "logvar", "activations", "gradients", "attention", "anomaly_map")
    m = ExportModule(model, "conv2", "sum_mu", "attention", 1.0, recon=True)
    assert m.output_names[-1] == "recon_error"
    m = ExportModule(model, "conv2", "sum_mu", "recon_error", 1.0, per_dim=True)
    assert m.output_names[-2:] == ("recon_error", "alpha")
    out = m(images(2, 28))
    assert type(out)._fields == m.output_names
    shapes = output_shapes(m)
    for name, t in out._asdict().items():
        assert list(t.shape) == [2, *shapes[name][1:]]
        assert not t.requires_grad  # no autograd graph is built


def test_runs_under_inference_mode() -> None:
    model = make_model("resnet18")
    module = ExportModule(model, "layer3", "sum_mu", "recon_error_blur", 2.0)
    img = images(2, 64)
    with torch.inference_mode():
        out = module(img)
    ref = reference_outputs(model, img, "layer3", "sum_mu", "recon_error_blur", 2.0)
    assert_close_to_reference(out._asdict(), ref)


def test_targets_and_errors() -> None:
    model = make_model("resnet18")
    assert export_layers(model) == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert ExportModule(model, "encoder.layer3", "sum_mu", "attention", 1.0).layer == "layer3"
    with pytest.raises(ExportError, match="choose one of .*layer3"):
        ExportModule(model, "conv1", "sum_mu", "attention", 1.0)  # backward would cross the max pool
    with pytest.raises(ExportError, match="unknown layer 'layer9'"):
        ExportModule(model, "layer9", "sum_mu", "attention", 1.0)
    with pytest.raises(ExportError, match="unknown score"):
        ExportModule(model, "layer3", "max", "attention", 1.0)
    with pytest.raises(ValueError, match="unknown anomaly_map"):
        ExportModule(model, "layer3", "sum_mu", "nope", 1.0)
    module = ExportModule(model, "layer3", "sum_mu", "attention", 1.0)
    with pytest.raises(ExportError, match="inference-only"):
        module.train()
    assert not module.eval().training


def test_build_export_module_uses_the_checkpoint_inference_section(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist")
    module, settings = build_export_module(ckpt)
    assert (settings["layer"], settings["score"], settings["anomaly_map"]) == ("conv2", "sum_mu", "attention")
    assert settings["recon"] is False and "recon_error" not in module.output_names
    assert len(settings["checkpoint_sha256"]) == 64 and settings["outputs"] == list(module.output_names)
    module, settings = build_export_module(ckpt, layer="conv1", score="difference", per_dim=True, recon=True)
    assert (module.layer, module.score, settings["per_dim"], settings["recon"]) == ("conv1", "difference", True, True)
    assert module.output_names[-2:] == ("recon_error", "alpha")


def test_fusion_is_refused_at_a_layer_or_score_its_scale_was_not_fitted_for() -> None:
    cfg = merge(DEFAULTS, {"inference": {"anomaly_map": "fusion", "layer": "layer3", "score": "sum_mu"}})
    assert inference_settings(cfg, layer="layer3")["layer"] == "layer3"
    for over in ({"layer": "layer1"}, {"score": "difference"}):
        with pytest.raises(ValueError, match="scale fitted at training"):
            inference_settings(cfg, **over)


def test_a_map_that_trusts_the_gray_warns_on_an_ssim_trained_model() -> None:
    cfg = merge(DEFAULTS, {"train": {"loss": "ssim"}, "inference": {"anomaly_map": "recon_error_blur"}})
    with pytest.warns(UserWarning, match="ssim_error"):
        inference_settings(cfg)
    with pytest.warns(UserWarning, match="fusion"):
        inference_settings(merge(cfg, {"inference": {"anomaly_map": "fusion"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference_settings(merge(cfg, {"inference": {"anomaly_map": "ssim_error"}}))["anomaly_map"] == "ssim_error"
        inference_settings(merge(cfg, {"train": {"loss": "ssim_l1"}}))


def test_checkpoint_is_hashed_from_the_bytes_it_was_loaded_from(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Training may rewrite model.pt while an export reads it: the recorded sha256 is that of the
    bytes the weights came from, not of the file as it is afterwards."""
    ckpt = make_checkpoint(tmp_path / "model.pt", "mnist")
    original = ckpt.read_bytes()
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, make_model("mnist", seed=1), torch.load(ckpt, weights_only=True)["config"])
    real_load = torch.load

    def load_then_rewrite(*args: object, **kwargs: object) -> object:
        out = real_load(*args, **kwargs)
        ckpt.write_bytes(newer.read_bytes())  # training saves its next model.pt right after our read
        return out

    monkeypatch.setattr(torch, "load", load_then_rewrite)
    module, settings = build_export_module(ckpt)
    assert settings["checkpoint_sha256"] == hashlib.sha256(original).hexdigest()
    assert torch.equal(module.model.fc.weight, make_model("mnist").fc.weight)


def test_load_model_hashed_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        load_model_hashed(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        load_model_hashed(tmp_path / "bad.pt")
    cfg = merge(DEFAULTS, {"model": {"arch": "mnist", "size": 28, "channels": 1, "latent": 8}})
    save_checkpoint(tmp_path / "early.pt", make_model("mnist"), cfg, stats_ready=False)
    with pytest.raises(ValueError, match="normal-data statistics"):
        load_model_hashed(tmp_path / "early.pt")


def test_a_model_without_the_one_class_heads_has_no_export_graph() -> None:
    from training.models import build_model

    model = build_model({"arch": "factorvae", "size": 64, "channels": 1, "latent": 10})
    with pytest.raises(ExportError, match="model arch 'factorvae' has no export graph"):
        ExportModule(model, "conv4", "sum_mu", "attention", 1.0)


def test_the_attention_scale_travels_only_for_the_fitted_layer_and_score(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "resnet18")
    module, settings = build_export_module(ckpt)
    assert settings["attention_scale"] == pytest.approx(float(module.model.map_scale[0])) and settings["attention_scale"] > 0
    other = "layer2" if settings["layer"] != "layer2" else "layer1"
    assert build_export_module(ckpt, layer=other)[1]["attention_scale"] is None  # fitted for another layer

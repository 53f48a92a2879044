"""Attention (Eq. 2-4) against an independent autograd reference on tiny networks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.attention import attention_map, explain, latent_score, per_dim_attention
from training.models import build_model


def _model(arch: str = "mnist", fc_relu: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    size = {"mnist": 28, "resnet18": 64}[arch]
    m = build_model({"arch": arch, "size": size, "channels": 1, "latent": 5, "fc_relu": fc_relu}).eval()
    # non-trivial BN statistics so eval-mode BN is not the identity
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m, size


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 1), generator=g, dtype=torch.uint8)


def _reference(model, image, split_after: str, score: str):
    """Independent path: run the encoder up to the layer by hand, treat the activation as a leaf
    and differentiate the rest of the network functionally."""
    _, x = model.preprocess(image)
    children = list(model.encoder.named_children())
    k = [n for n, _ in children].index(split_after) + 1
    a = x
    for _, mod in children[:k]:
        a = mod(a)
    a = a.detach().requires_grad_(True)
    h = a
    for _, mod in children[k:]:
        h = mod(h)
    h = model.fc_act(model.fc(h.flatten(1)))
    mu, logvar = model.fc_mu(h), model.fc_logvar(h)
    s = latent_score(mu, logvar, score, model.normal_mu, model.normal_var)
    (g,) = torch.autograd.grad(s.sum(), a)
    alpha = g.mean(dim=(2, 3))
    m = F.relu((alpha[:, :, None, None] * a).sum(1, keepdim=True))
    return F.interpolate(m, size=image.shape[1:3], mode="bilinear", align_corners=False), g


def test_attention_matches_independent_reference_conv():
    model, size = _model("mnist")
    x = _images(3, size)
    for score in ("sum_mu", "difference"):
        e = explain(model, x, "relu1", score)
        ref, g = _reference(model, x, "relu1", score)
        torch.testing.assert_close(e.gradients, g, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(e.attention, ref, rtol=1e-5, atol=1e-7)
        assert e.attention.shape == (3, 1, size, size) and e.attention.abs().sum() > 0


def test_attention_matches_independent_reference_resnet_layer3():
    model, size = _model("resnet18", fc_relu=False)
    x = _images(2, size)
    e = explain(model, x, "layer3", "sum_mu")
    ref, g = _reference(model, x, "layer3", "sum_mu")
    torch.testing.assert_close(e.gradients, g, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(e.attention, ref, rtol=1e-4, atol=1e-7)


def test_batch_gives_per_sample_gradients():
    model, size = _model("resnet18", fc_relu=False)
    x = _images(3, size)
    batch = explain(model, x, "layer2").gradients
    single = torch.cat([explain(model, x[i:i + 1], "layer2").gradients for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-7)


def test_alpha_of_sum_mu_is_sum_of_per_dim_alphas():
    model, size = _model("mnist")
    x = _images(2, size)
    maps, alpha, mu = per_dim_attention(model, x, "conv2")
    e = explain(model, x, "conv2", "sum_mu")
    torch.testing.assert_close(alpha.sum(1), e.gradients.mean(dim=(2, 3)), rtol=1e-5, atol=1e-7)
    assert maps.shape == (2, 5, size, size) and alpha.shape == (2, 5, 128)
    # each M^i is the attention of z_i alone
    torch.testing.assert_close(mu, e.mu)


def test_without_fc_relu_last_layer_attention_weights_are_input_independent():
    """Why the paper's sum(mu) attention at the last conv layer cannot localize without a ReLU
    in the head: ds/dA is the constant W_mu^T 1 through two linear layers."""
    model, size = _model("resnet18", fc_relu=False)
    g1 = explain(model, _images(1, size, seed=1), "layer4").gradients
    g2 = explain(model, _images(1, size, seed=2), "layer4").gradients
    torch.testing.assert_close(g1, g2)
    relu_model, _ = _model("resnet18", fc_relu=True)
    h1 = explain(relu_model, _images(1, size, seed=1), "layer4").gradients
    h2 = explain(relu_model, _images(1, size, seed=2), "layer4").gradients
    assert not torch.allclose(h1, h2)


def test_attention_map_is_raw_not_normalized():
    a = torch.rand(2, 3, 4, 4)
    g = torch.ones(2, 3, 4, 4)
    m1 = attention_map(a, g, (8, 8))
    m2 = attention_map(a, 2 * g, (8, 8))
    torch.testing.assert_close(m2, 2 * m1)  # scaling the gradient scales the map: no min-max


def test_difference_score_is_orientation_free():
    mu = torch.tensor([[1.0, -2.0]])
    lv = torch.zeros(1, 2)
    nm, nv = torch.zeros(2), torch.ones(2)
    assert torch.allclose(latent_score(mu, lv, "difference", nm, nv), latent_score(-mu, lv, "difference", nm, nv))
    assert not torch.allclose(latent_score(mu, lv, "sum_mu"), latent_score(-mu, lv, "sum_mu"))


def test_residual_attention_variants_by_hand():
    from training.attention import residual_attention

    g = torch.Generator().manual_seed(0)
    a, grads = torch.rand(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    size = (8, 8)
    for v in ("eq2", "abs", "weighted", "uniform"):  # an unchanged part leaves no residual
        assert residual_attention(a, a, grads, size, v).abs().max() == 0
    # with a zero reconstruction the eq2 residual is the paper's Eq. 2 map itself
    assert torch.allclose(residual_attention(a, torch.zeros_like(a), grads, size, "eq2"), attention_map(a, grads, size))
    # weighted with equal |alpha| = c is c * K * uniform: alpha only re-weights channels
    equal = torch.full_like(grads, -0.5)
    r = torch.rand(2, 3, 4, 4, generator=g)
    assert torch.allclose(residual_attention(a, r, equal, size, "weighted"),
                          0.5 * 3 * residual_attention(a, r, equal, size, "uniform"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown residual variant"):
        residual_attention(a, r, grads, size, "nope")

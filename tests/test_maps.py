"""The SSIM-weighted reconstruction error against hand-computed cases (export parity: test_export_onnx)."""
from __future__ import annotations

import pytest
import torch

from training.maps import SSIM_C1, SSIM_SIGMA, AnomalyMap, GaussianBlur, gaussian_kernel, structural_error


def test_identical_images_have_no_structural_error() -> None:
    x = torch.rand(2, 3, 24, 24)
    assert structural_error(x, x.clone(), GaussianBlur(SSIM_SIGMA)).abs().max() < 1e-6


def test_flat_images_follow_the_ssim_formula() -> None:
    # constant images: no variance, so SSIM = (2ab + c1) / (a^2 + b^2 + c1), times |a - b|
    a, b = 0.8, 0.5
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    ssim = (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)
    got = structural_error(x, y, GaussianBlur(SSIM_SIGMA))
    # float32 E[x^2] - E[x]^2 leaves ~1e-7 of variance, divided by c2 = 9e-4: the kernel-dependent
    # error reaches 4e-5 on some CPUs (oneDNN's convolution), so 1e-6 was too tight
    assert torch.allclose(got, torch.full_like(got, (1 - ssim) * abs(a - b)), atol=2e-4)


def test_a_shifted_edge_scores_above_a_brightness_offset_of_the_same_error() -> None:
    # The point of the weighting: a structural miss counts more than an intensity offset.
    x = torch.zeros(1, 1, 32, 32)
    x[..., :, 16:] = 1.0
    shifted = torch.roll(x, 2, dims=-1)
    err_shift = (x - shifted).abs().mean()
    offset = (x + err_shift).clamp(max=1.0 + err_shift)  # the same mean |error|, spread evenly
    amap = AnomalyMap("ssim_error", sigma=2.0)
    scale = torch.ones(2)
    assert amap(None, x, shifted, scale).sum() > 2 * amap(None, x, offset, scale).sum()


def test_ssim_loss_is_zero_on_a_perfect_reconstruction_and_grows_with_structure_loss() -> None:
    from training.losses import vae_loss
    x = torch.rand(2, 1, 24, 24)
    mu, logvar = torch.zeros(2, 4), torch.zeros(2, 4)
    assert vae_loss(x.clone(), x, mu, logvar, "ssim").recon.abs() < 1e-3
    blurred = GaussianBlur(2.0)(x)
    flat = x.mean() * torch.ones_like(x)
    assert 0 < vae_loss(blurred, x, mu, logvar, "ssim").recon < vae_loss(flat, x, mu, logvar, "ssim").recon


def test_ssim_l1_loss_sees_an_intensity_offset_on_a_bright_flat_region_that_ssim_misses() -> None:
    from training.losses import vae_loss
    x = torch.full((1, 1, 24, 24), 0.9)
    mu, logvar = torch.zeros(1, 4), torch.zeros(1, 4)
    offset = x - 0.1
    ssim_only = float(vae_loss(offset, x, mu, logvar, "ssim").recon)
    mixed = float(vae_loss(offset, x, mu, logvar, "ssim_l1").recon)
    assert ssim_only < 0.01 * 24 * 24            # per pixel 1 - SSIM ~ 0.007: SSIM barely sees it
    assert mixed > 0.016 * 24 * 24 * 0.9         # the L1 term (0.16 x 0.1 per pixel) does
    assert float(vae_loss(x.clone(), x, mu, logvar, "ssim_l1").recon) < 1e-3


def test_gaussian_kernel_is_the_normal_density_to_three_sigma() -> None:
    k = gaussian_kernel(2.0)
    x = torch.arange(-6, 7, dtype=torch.float32)
    want = torch.exp(-x * x / 8.0)
    torch.testing.assert_close(k, want / want.sum())
    assert len(k) == 13 and float((k * x * x).sum()) == pytest.approx(3.951, abs=1e-3)  # truncated variance


def test_fusion_divides_each_term_by_its_own_scale() -> None:
    amap = AnomalyMap("fusion", 2.0)
    target, recon = torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), 0.1)
    out = amap(torch.ones(1, 1, 8, 8), target, recon, torch.tensor([2.0, 4.0]))  # [attention, error] scales
    torch.testing.assert_close(out, torch.full((1, 1, 8, 8), 1 / 2 + 0.4 / 4))

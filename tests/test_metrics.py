"""Metrics against hand-computed small cases."""
from __future__ import annotations

import numpy as np
import pytest

from core.metrics import aupro, best_iou, localization_metrics, roc_auc


def test_roc_auc_hand_computed():
    # pairs (pos, neg): (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4 ordered
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_best_iou_hand_computed():
    labels = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.5, 0.6, 0.1, 0.2])
    # threshold 0.9: TP1 FP0 FN1 -> 1/2 ; threshold 0.5: TP2 FP1 FN0 -> 2/3 ; threshold 0.6: 1/3
    iou, thr = best_iou(labels, scores)
    assert iou == pytest.approx(2 / 3)
    assert thr == pytest.approx(0.5)
    assert best_iou(labels.astype(bool), labels.astype(float))[0] == pytest.approx(1.0)


def test_aupro_perfect_and_partial():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = True  # region A
    masks[1, 5:7, 5:7] = True  # region B
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-6)
    # region A scored high, region B at the level of the normal pixels: PRO ~0.5 over the range
    partial = np.zeros((2, 8, 8))
    partial[0][masks[0]] = 1.0
    rng = np.random.default_rng(0)
    partial[1] = rng.uniform(0, 1, (8, 8)) * 0.5
    partial[0][~masks[0]] = rng.uniform(0, 0.5, (~masks[0]).sum())
    v = aupro(masks, partial)
    assert 0.5 <= v < 0.75
    # random maps: PRO ~= FPR, area up to 0.3 normalized ~ 0.15
    rnd = rng.uniform(0, 1, (40, 16, 16))
    m = np.zeros((40, 16, 16), bool)
    m[:, 4:10, 4:10] = True
    assert aupro(m, rnd) == pytest.approx(0.15, abs=0.03)


def test_localization_metrics_keys_and_image_score():
    masks = np.zeros((4, 4, 4), bool)
    masks[2, 0, 0] = masks[3, 1, 1] = True
    maps = masks.astype(float) + 0.01
    r = localization_metrics(masks, maps, np.array([0, 0, 1, 1]))
    assert r["pixel_auroc"] == pytest.approx(1.0) and r["image_auroc"] == pytest.approx(1.0)
    assert r["best_iou"] == pytest.approx(1.0)


def test_aupro_when_tied_normal_scores_straddle_the_fpr_limit():
    # 100 normal pixels: 20 at 3, 30 at 2, 50 at 0; one 10-pixel region: 5 at 3, 5 at 2.
    # MVTec's PRO curve: (0, 0), (0.2, 0.5) at >= 3, (0.5, 1) at >= 2: at FPR 0.3 the PRO is
    # 0.5 + 0.5 * (0.1 / 0.3), interpolated towards (0.5, 1), not towards (1, 1).
    maps = np.zeros((1, 10, 11))
    masks = np.zeros((1, 10, 11), bool)
    masks[0, :, 10] = True
    maps[0, :, :10] = np.array([3.0] * 20 + [2.0] * 30 + [0.0] * 50).reshape(10, 10)
    maps[0, :5, 10], maps[0, 5:, 10] = 3.0, 2.0
    exact = (0.5 * 0.2 * 0.5 + 0.5 * (0.5 + 0.5 + 0.5 / 3) * 0.1) / 0.3
    assert aupro(masks, maps) == pytest.approx(exact, abs=1e-9)


def test_aupro_past_the_limit_counts_the_tie_not_the_region_pixels_below_it():
    # normal: 45 at 0, 36 at 0.5, 9 at 1.0 (the 0.5 tie spans FPR 0.1 .. 0.5); region: 5 at 2, 5 at 0.25.
    # MVTec's full curve: (0, 0.5) .. (0.1, 0.5) .. (0.5, 0.5) at >= 0.5, so AUPRO to 0.3 is 0.5; a
    # point at the next lower normal score (0) would count the region's 0.25 pixels too early (0.583).
    maps = np.array([0.0] * 45 + [0.5] * 36 + [1.0] * 9 + [2.0] * 5 + [0.25] * 5).reshape(1, 1, 100)
    masks = np.zeros((1, 1, 100), bool)
    masks[0, 0, 90:] = True
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-9)


def test_auroc_standard_error_matches_a_bootstrap_and_shrinks_with_more_parts():
    from core.metrics import auroc_standard_error

    rng = np.random.default_rng(0)
    good, bad = rng.normal(0, 1, 21), rng.normal(1.8, 1, 63)
    y = np.r_[np.zeros(21, bool), np.ones(63, bool)]
    s = np.r_[good, bad]
    a = roc_auc(y, s)
    boot = []
    for _ in range(400):
        i, j = rng.integers(21, size=21), 21 + rng.integers(63, size=63)
        boot.append(roc_auc(y[np.r_[i, j]], s[np.r_[i, j]]))
    se = auroc_standard_error(a, 63, 21)
    assert 0.7 * np.std(boot) < se < 1.3 * np.std(boot)
    assert auroc_standard_error(a, 630, 210) < se / 2.5
    assert auroc_standard_error(1.0, 10, 10) == 0.0 and auroc_standard_error(0.9, 0, 10) == 0.0

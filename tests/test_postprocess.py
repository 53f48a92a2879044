"""runtime.postprocess: score, verdict, mask, area and boxes, mapped back to the image size."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.postprocess import OutputError, Thresholds, boxes_of, inspect_map, to_size


def test_thresholds_cli_overrides_sidecar_each_independently() -> None:
    t = Thresholds.resolve({"pixel": 0.5, "image": 0.9}, pixel=None, image=0.7)
    assert (t.pixel, t.image, t.source) == (0.5, 0.7, "sidecar+cli")
    assert Thresholds.resolve({}, None, None) == Thresholds(None, None, "none")
    assert not Thresholds.resolve(None).any
    assert Thresholds.resolve(None, pixel=0.1).source == "cli"


def test_score_is_max_and_verdict_uses_image_threshold() -> None:
    m = np.zeros((1, 8, 8), np.float32)
    m[0, 2, 3] = 0.75  # exact in float32: a score equal to the threshold is tested, not 0.8000000119
    ng = inspect_map(m, (8, 8), Thresholds(None, 0.75))
    assert ng.score == 0.75 and ng.verdict == "NG"  # >= threshold is NG
    assert inspect_map(m, (8, 8), Thresholds(None, 0.76)).verdict == "OK"
    none = inspect_map(m, (8, 8), Thresholds())
    assert none.verdict == "NO VERDICT" and none.area is None and none.boxes == []
    assert none.as_row()["n_boxes"] is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_never_passes(bad: float) -> None:
    """NaN >= threshold is False: without the check a NaN map would be a good part."""
    m = np.full((8, 8), 0.1, np.float32)
    m[3, 4] = bad
    for th in (Thresholds(0.5, 0.5), Thresholds(None, 0.5), Thresholds()):
        with pytest.raises(OutputError, match=r"not finite \(NaN/inf in anomaly_map\)"):
            inspect_map(m, (8, 8), th)


def test_mask_area_and_boxes_at_original_size() -> None:
    m = np.zeros((16, 16), np.float32)
    m[2:6, 3:5] = 1.0      # component A: 4 rows x 2 cols at model size
    m[10:12, 10:16] = 0.9  # component B
    res = inspect_map(m, (64, 32), Thresholds(0.5, 0.5), keep_maps=True)  # image is 32 wide, 64 high
    assert res.mask is not None and res.mask.shape == (64, 32) and res.anomaly_map.shape == (64, 32)
    assert set(np.unique(res.mask)) <= {0, 255}
    assert res.area == int(np.count_nonzero(res.mask))
    assert len(res.boxes) == 2
    for x, y, w, h in res.boxes:  # boxes lie inside the original image
        assert 0 <= x and 0 <= y and x + w <= 32 and y + h <= 64
    # A is at rows 2..6 / cols 3..5 of 16 -> about rows 8..24, cols 6..10 of the 64x32 image
    xa, ya, wa, ha = [b for b in res.boxes if b[1] < 32][0]
    assert abs(ya - 8) <= 2 and abs(ya + ha - 24) <= 2 and abs(xa - 6) <= 2 and abs(xa + wa - 10) <= 2


def test_reduced_decode_scales_area_and_boxes() -> None:
    m = np.zeros((8, 8), np.float32)
    m[2:4, 2:4] = 1.0
    full = inspect_map(m, (80, 80), Thresholds(0.5, None))
    half = inspect_map(m, (40, 40), Thresholds(0.5, None), scale=2.0)
    assert half.area == pytest.approx(full.area, rel=0.15)
    assert np.allclose(half.boxes[0], full.boxes[0], atol=3)


def test_below_pixel_threshold_skips_resize_but_reports_zero() -> None:
    m = np.full((8, 8), 0.1, np.float32)
    res = inspect_map(m, (1000, 1000), Thresholds(0.5, 0.5), keep_maps=False)
    assert res.area == 0 and res.boxes == [] and res.verdict == "OK" and res.mask is None
    kept = inspect_map(m, (20, 30), Thresholds(0.5, 0.5), keep_maps=True)
    assert kept.mask.shape == (20, 30) and not kept.mask.any()


def test_boxes_are_deterministic_largest_first() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[0:2, 0:2] = 255
    mask[10:15, 10:15] = 255
    mask[0:2, 18:20] = 255
    assert boxes_of(mask) == [(10, 10, 5, 5), (0, 0, 2, 2), (18, 0, 2, 2)]
    assert boxes_of(mask, min_area=5) == [(10, 10, 5, 5)]


def test_to_size_keeps_range() -> None:
    m = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    up = to_size(m[None], 33, 47)
    assert up.shape == (33, 47) and up.max() <= m.max() + 1e-6 and up.min() >= m.min() - 1e-6


def test_cropped_labelling_matches_full_image_labelling() -> None:
    import cv2

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = np.zeros((120, 90), np.uint8)
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.integers(0, 85), rng.integers(0, 115)
            mask[y:y + int(rng.integers(1, 30)), x:x + int(rng.integers(1, 30))] = 255
        n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
        ref = sorted(((int(a), int(x), int(y), int(w), int(h)) for x, y, w, h, a in stats[1:n]),
                     key=lambda b: (-b[0], b[2], b[1]))
        assert boxes_of(mask) == [b[1:] for b in ref]
        assert boxes_of(mask > 0) == boxes_of(mask)


def test_more_components_than_16_bit_labels() -> None:
    dots = np.zeros((520, 520), np.uint8)
    dots[::2, ::2] = 255  # 67600 isolated pixels: past the 16-bit label range, labelled anyway
    assert len(boxes_of(dots)) == 260 * 260


def test_a_map_whose_maximum_equals_the_pixel_threshold_has_a_mask() -> None:
    m = np.zeros((8, 8), np.float32)
    m[2:4, 2:4] = 0.5  # exact in float32
    r = inspect_map(m, (8, 8), Thresholds(0.5, None))
    assert r.area == 4 and r.boxes == [(2, 2, 2, 2)]

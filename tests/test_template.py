"""families.template.bank: the nearest-template anomaly map on synthetic aligned parts."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from families.template.bank import TemplateBank

SIZE = 64


def aligned(n: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """uint8 [n, SIZE, SIZE, C]: registered-looking parts (a horizontal bar with a head on the
    left) whose length, thickness and position vary a little, on a noisy bright ground."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE, channels), np.uint8)
    for i in range(n):
        img = np.full((SIZE, SIZE), 200.0)
        x1, half, dy = 52 + rng.integers(-3, 4), 3 + rng.integers(0, 2), rng.integers(-1, 2)
        cv2.rectangle(img, (10, 32 + dy - half), (int(x1), 32 + dy + half), 60, -1)
        cv2.rectangle(img, (10, 32 + dy - 7), (16, 32 + dy + 7), 60, -1)
        img += rng.normal(0, 2, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)[:, :, None]
    return out


def test_a_pasted_defect_holds_the_map_maximum() -> None:
    bank = TemplateBank(aligned(30), k=5)
    test = aligned(1, seed=7)
    maps_good = bank.anomaly_map(test)
    defect = test.copy()
    defect[0, 28:34, 38:44] = 255                   # a bright scratch on the shaft
    maps = bank.anomaly_map(defect)
    assert maps.shape == (1, 1, SIZE, SIZE) and maps.dtype == np.float32
    y, x = np.unravel_index(np.argmax(maps[0, 0]), maps.shape[2:])
    assert 28 <= y < 34 and 38 <= x < 44
    assert maps.max() > 3 * maps_good.max()
    # units: gray levels / 255, blurred: the peak is below the raw difference (195 / 255)
    assert 0.1 < maps.max() < 195 / 255


def test_nearest_finds_the_identical_image_at_distance_zero() -> None:
    images = aligned(20, seed=3)
    bank = TemplateBank(images, k=4)
    idx, dist = bank.nearest(images[[5, 11]])
    assert idx.shape == (2, 4) and list(idx[:, 0]) == [5, 11]
    assert np.allclose(dist[:, 0], 0, atol=1e-2) and np.all(np.diff(dist, axis=1) >= 0)
    # an image of the bank has a zero map before the blur: no pixel is anomalous
    assert np.abs(TemplateBank(images, k=3, sigma=0).anomaly_map(images[:3])).max() == 0


def test_default_sigma_scales_with_the_size_and_k_is_capped() -> None:
    bank = TemplateBank(aligned(3), k=10)
    assert bank.k == 3 and bank.sigma == pytest.approx(3 * SIZE / 256)
    assert bank.nbytes >= aligned(3).nbytes
    assert bank.nearest(aligned(2, seed=1))[0].shape == (2, 3)


def test_colour_banks_take_the_largest_channel_difference() -> None:
    images = aligned(6, channels=3)
    test = images[:1].copy()
    test[0, 20:24, 20:24, 2] = 0                     # only the blue channel differs
    m = TemplateBank(images, k=2, sigma=0).anomaly_map(test)
    assert m[0, 0, 20:24, 20:24].min() == pytest.approx(200 / 255, abs=0.05) and m[0, 0, :10].max() == 0


def test_save_load_round_trip(tmp_path: Path) -> None:
    bank = TemplateBank(aligned(12), k=3, sigma=1.5)
    bank.save(tmp_path / "bank.npz")
    again = TemplateBank.load(tmp_path / "bank.npz")
    assert again.k == 3 and again.sigma == 1.5 and np.array_equal(again.images, bank.images)
    test = aligned(2, seed=9)
    assert np.array_equal(again.anomaly_map(test), bank.anomaly_map(test))
    assert [p.name for p in tmp_path.iterdir()] == ["bank.npz"]     # no temporary left behind


def test_a_tolerance_forgives_edges_a_pixel_off_but_not_a_defect(tmp_path: Path) -> None:
    images = aligned(30)
    off = np.roll(aligned(1, seed=7), 1, axis=2)              # the part one pixel right of where training had it
    strict = TemplateBank(images, k=5, sigma=0).anomaly_map(off)
    tolerant = TemplateBank(images, k=5, sigma=0, tolerance=1)
    assert tolerant.anomaly_map(off).max() < 0.3 * strict.max()     # the edges were the difference
    defect = off.copy()
    defect[0, 28:34, 38:44] = 255
    m = tolerant.anomaly_map(defect)[0, 0]
    y, x = np.unravel_index(np.argmax(m), m.shape)
    assert 28 <= y < 34 and 38 <= x < 44 and m.max() > 0.5            # 255 is outside any shaft range
    tolerant.save(tmp_path / "bank.npz")
    assert TemplateBank.load(tmp_path / "bank.npz").tolerance == 1
    with np.load(tmp_path / "bank.npz") as z:                      # a bank written before tolerance existed
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if k != "tolerance"})
    assert TemplateBank.load(tmp_path / "old.npz").tolerance == 0
    for bad in (-1, 5, True, 1.5):
        with pytest.raises(ValueError, match="tolerance"):
            TemplateBank(images, tolerance=bad)


def test_bad_files_are_value_errors_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive at all")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for p in (junk, empty, foreign, single, tmp_path / "missing.npz"):
        with pytest.raises(ValueError, match=p.name):
            TemplateBank.load(p)


def test_bad_inputs_are_value_errors() -> None:
    bank = TemplateBank(aligned(4))
    with pytest.raises(ValueError, match="bank holds"):
        bank.anomaly_map(np.zeros((1, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        bank.anomaly_map(np.zeros((1, SIZE, SIZE, 1), np.float32))
    with pytest.raises(ValueError, match="k"):
        TemplateBank(aligned(4), k=0)
    with pytest.raises(ValueError, match="N >= 1"):
        TemplateBank(np.zeros((0, SIZE, SIZE, 1), np.uint8))

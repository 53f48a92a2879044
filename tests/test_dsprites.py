"""dSprites renderer and helpers: factors act as named, official order, cache round trip."""
from __future__ import annotations

import numpy as np
import pytest

from training.data import dsprites as ds


def _centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img)
    return np.array([xs.mean(), ys.mean()])


def test_index_order_matches_official_layout() -> None:
    # posY varies fastest, shape slowest, as the official npz stores the images
    assert ds.NUM_IMAGES == 737_280
    f = ds.index_to_factors(np.arange(ds.NUM_IMAGES))
    assert (ds.factors_to_index(f) == np.arange(ds.NUM_IMAGES)).all()
    assert f[1].tolist() == [0, 0, 0, 0, 1] and f[32].tolist() == [0, 0, 0, 1, 0]
    assert f[-1].tolist() == [2, 5, 39, 31, 31]
    with pytest.raises(ValueError, match="out of range"):
        ds.factors_to_index(np.array([[3, 0, 0, 0, 0]]))


def test_render_is_binary_and_inside_the_image() -> None:
    # the largest sprites at the extreme positions and every orientation stay off the border
    f = np.array([[s, 5, o, x, y] for s in range(3) for o in range(0, 40, 3) for x in (0, 31) for y in (0, 31)])
    imgs = ds.render(f)
    assert imgs.dtype == np.uint8 and set(np.unique(imgs)) == {0, 1}
    assert imgs[:, 0].sum() == imgs[:, -1].sum() == imgs[:, :, 0].sum() == imgs[:, :, -1].sum() == 0
    assert (imgs.reshape(len(f), -1).sum(1) > 20).all()


def test_posx_moves_the_centroid_right_and_posy_down() -> None:
    for shape in range(3):
        xs = ds.render(np.array([[shape, 3, 7, x, 10] for x in range(32)]))
        cx = np.array([_centroid(i)[0] for i in xs])
        assert (np.diff(cx) > 0).all()  # every step moves it (the original's "all outputs differ")
        assert 15 < cx[0] < 17 and 46 < cx[-1] < 49  # about 1 pixel per step over the central half
        ys = ds.render(np.array([[shape, 3, 7, 10, y] for y in range(32)]))
        assert (np.diff([_centroid(i)[1] for i in ys]) > 0).all()


def test_scale_grows_the_area() -> None:
    for shape in range(3):
        area = ds.render(np.array([[shape, s, 0, 16, 16] for s in range(6)])).reshape(6, -1).sum(1)
        assert (np.diff(area) >= 0).all()
        assert 3.2 < area[-1] / area[0] < 4.8  # area ~ scale^2, 0.5 -> 1


def test_orientation_rotates_the_heart() -> None:
    # the heart has no rotational symmetry: a half turn flips it upside down, area is kept
    up, turned, half = ds.render(np.array([[2, 5, 0, 16, 16], [2, 5, 10, 16, 16], [2, 5, 20, 16, 16]]))
    assert abs(int(turned.sum()) - int(up.sum())) < 0.06 * up.sum()
    assert (up != turned).mean() > 0.02
    flipped = up[::-1]
    shift = np.round(_centroid(half) - _centroid(flipped)).astype(int)
    aligned = np.roll(flipped, (shift[1], shift[0]), axis=(0, 1))
    assert (aligned != half).sum() < 0.25 * up.sum()  # 20/39 of a full turn is ~185 degrees
    assert (up != half).sum() > 0.3 * up.sum()  # while an upright and an inverted heart differ
    # orientation 0 and 2 pi (the first and last class) draw the same sprite, as in the original
    a, b = ds.render(np.array([[1, 4, 0, 9, 20], [1, 4, 39, 9, 20]]))
    assert (a != b).sum() <= 2


def test_one_step_of_any_factor_changes_the_image() -> None:
    # the original's "smallest step changes while ensuring that all pixel outputs were different":
    # here all but a few axis-aligned square scale steps (~0.1%) change the pixels
    f = ds.DSprites.__new__(ds.DSprites).sample_factors(600, np.random.default_rng(1))
    for col, last in ((1, 5), (2, 38), (3, 31), (4, 31)):
        g = f[f[:, col] < last]
        h = g.copy()
        h[:, col] += 1
        same = (ds.render(g) == ds.render(h)).reshape(len(g), -1).all(1)
        assert same.mean() < 0.01, ds.FACTOR_NAMES[col]


def test_shapes_differ() -> None:
    imgs = ds.render(np.array([[s, 5, 0, 16, 16] for s in range(3)]))
    assert (imgs[0] != imgs[1]).sum() > 30 and (imgs[1] != imgs[2]).sum() > 30


def test_sample_factors_is_seeded_and_in_range() -> None:
    d = ds.DSprites.__new__(ds.DSprites)  # the helpers do not need the images
    a = d.sample_factors(500, np.random.default_rng(3))
    assert (a == d.sample_factors(500, np.random.default_rng(3))).all()
    assert (a.min(0) == 0).all() and (a.max(0) == np.array(ds.FACTOR_SIZES) - 1).all()


def test_official_npz_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ds.load_dsprites(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, imgs=np.zeros((2, 64, 64), np.uint8), latents_classes=np.zeros((2, 6), np.int64))
    with pytest.raises(ValueError, match="bad.npz"):
        ds.load_dsprites(bad)
    np.savez(bad, other=np.zeros(1))
    with pytest.raises(ValueError, match="bad.npz"):
        ds.load_dsprites(bad)


def test_cache_round_trip(tmp_path, monkeypatch) -> None:
    # the whole load/cache path on the first 64 images (the full render is the slow test below)
    monkeypatch.setattr(ds, "NUM_IMAGES", 64)
    d = ds.load_dsprites(cache_dir=tmp_path)
    assert d.source == "rendered" and d.cache_path == tmp_path / f"dsprites-{ds.spec_hash()}.npz"
    again = ds.load_dsprites(cache_dir=tmp_path)
    assert again.source == "cache" and (again.packed == d.packed).all()
    assert (again.images(np.arange(64))[..., 0] == ds.render(ds.index_to_factors(np.arange(64))) * 255).all()
    d.cache_path.write_bytes(b"junk")  # a corrupt cache is rendered again, not trusted
    assert ds.load_dsprites(cache_dir=tmp_path).source == "rendered"
    assert ds.load_dsprites(cache_dir=tmp_path).source == "cache"


@pytest.mark.slow
def test_full_render_matches_render(tmp_path) -> None:
    d = ds.load_dsprites(cache_dir=tmp_path, use_cache=False)
    f = d.sample_factors(256, np.random.default_rng(0))
    assert (d.images_for_factors(f)[..., 0] == ds.render(f) * 255).all()

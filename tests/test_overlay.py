"""runtime.overlay: heatmap blend, mask contours, verdict text; fixed vs per-image scales."""
from __future__ import annotations

import numpy as np

from runtime import overlay as ov


def test_render_sizes_and_channels() -> None:
    gray = np.full((40, 60, 1), 128, np.uint8)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 255  # pure red in RGB
    att = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 255
    for img in (gray, rgb, gray[..., 0]):
        out = ov.render(img, att, mask, "NG", 0.93, 0.5)
        assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    plain = ov.render(rgb)
    assert tuple(plain[30, 30]) == (0, 0, 255)  # RGB in, BGR out
    bgr = ov.render(rgb, bgr=True)
    assert tuple(bgr[30, 30]) == (255, 0, 0)


def test_contours_and_label_change_pixels() -> None:
    img = np.full((100, 100, 1), 100, np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 40:60] = 255
    base = ov.render(img)
    with_mask = ov.render(img, mask=mask)
    assert (with_mask != base).any(axis=2)[40:60, 40:60].sum() > 0  # the outline is drawn
    assert (with_mask[70:, 70:] == base[70:, 70:]).all()            # far from it nothing changes
    ng = ov.render(img, score=0.9, verdict="NG")
    ok = ov.render(img, score=0.1, verdict="OK")
    band = (slice(0, 15), slice(0, 60))
    assert (ng[band] != ok[band]).any()  # red vs green text
    assert ov.label_text(None, 0.12345) == "score 0.1235"
    assert ov.label_text("NG", 0.9, 0.5) == "NG  0.9 / 0.5"
    assert ov.label_text("NO VERDICT", 0.12345) == "NO VERDICT  score 0.1235"


def test_heatmap_fixed_scale_with_threshold() -> None:
    low = np.full((10, 10), 0.1, np.float32)
    # fixed 0..2*thr: equal values give equal colors on every image
    a = ov.heatmap(low, pixel_threshold=0.5)
    b = ov.heatmap(np.pad(low, 1, constant_values=0.1), pixel_threshold=0.5)
    assert (a[5, 5] == b[5, 5]).all()
    # per-image scale without threshold: the max is the hottest color
    m = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    h = ov.heatmap(m, size=(20, 30))
    assert h.shape == (20, 30, 3)
    assert ov.scale_range(np.zeros((3, 3))) [1] > 0  # flat maps do not divide by zero


def test_legend_says_what_the_colors_are_and_sits_at_the_bottom() -> None:
    img = np.full((200, 200, 1), 100, np.uint8)
    text = ov.legend_text("attention", True, 0.25)
    assert text == "colour: latent attention (explains)  outline: anomaly map >= 0.25"
    assert ov.legend_text("attention", False, None) == "colour: latent attention (explains) (per image)"
    assert ov.legend_text("anomaly_map", True, None) == "colour: anomaly map (decides)"
    assert ov.legend_text("anomaly_map", True, 0.25) == "colour: anomaly map (decides)  outline: map >= 0.25"
    base, drawn = ov.render(img), ov.render(img, legend=text)
    changed = (drawn != base).any(axis=2)
    assert changed[180:].any() and not changed[:150].any()
    wide = np.full((1024, 1024, 1), 100, np.uint8)  # the camera's screw region: the whole line fits
    long = ov.legend_text("anomaly_map", True, 0.06468270346522331)
    band = (ov.render(wide, legend=long) != ov.render(wide)).any(axis=2)[-60:]
    assert not band[:, -3:].any()  # the text ends before the right edge (it was cut at "0.0646")
    small = np.full((64, 64, 1), 100, np.uint8)  # too narrow to read: no clipped legend
    assert (ov.render(small, legend=text) == ov.render(small)).all()


def test_a_fixed_explanation_scale_keeps_a_flat_low_map_cold() -> None:
    # per image, a map of tiny values still spans the whole colormap; on the model's fixed scale
    # (0 .. 2 x its normal 99th percentile) the same map stays at the cold end, like a good part
    img = np.full((32, 32, 1), 100, np.uint8)
    m = np.linspace(0.0, 0.01, 32 * 32, dtype=np.float32).reshape(32, 32)
    stretched = ov.render(img, m, alpha=1.0)
    fixed = ov.render(img, m, alpha=1.0, vmin=0.0, vmax=2.0)
    red = lambda x: int(x[..., 2].max())  # noqa: E731 - BGR: JET's hot end is red
    assert red(stretched) > 200 and red(fixed) < 50


def test_the_hottest_colour_falls_on_the_known_hot_spot_and_the_bar_shows_the_scale() -> None:
    """Issue 21: an overlay of a map with a known hot spot has its hottest colour there."""
    img = np.full((256, 256, 1), 120, np.uint8)
    m = np.zeros((64, 64), np.float32)
    m[40:48, 10:18] = 1.0  # the hot spot, at 4x in the picture: rows 160..192, columns 40..72
    out = ov.render(img, m, alpha=1.0, vmin=0.0, vmax=1.0, colorbar=True, mark=(0.5, "threshold"))
    body = out[:, :200].astype(int)  # left of the colour bar
    hot = body[..., 2] - body[..., 0]  # JET: red high and blue low only at the hot end
    y, x = np.unravel_index(np.argmax(hot), hot.shape)
    assert 160 <= y < 192 and 40 <= x < 72
    bar = out[40:200, 240:252].astype(int)  # the colour bar at the right edge: hot at the top, cold below
    assert bar[5, :, 2].mean() > bar[5, :, 0].mean() and bar[-5, :, 0].mean() > bar[-5, :, 2].mean()


def test_side_by_side_panels_and_a_failure_badge() -> None:
    a = np.zeros((50, 60, 3), np.uint8)
    b = np.full((50, 60, 3), 255, np.uint8)
    both = ov.side_by_side([a, b])
    assert both.shape == (50, 124, 3) and (both[:, :60] == 0).all() and (both[:, 64:] == 255).all()
    img = np.full((100, 100, 1), 100, np.uint8)
    failed = ov.render(img, status="REGISTRATION NO_PART")
    band = failed[:12, :60].reshape(-1, 3).astype(int)
    assert (np.abs(band - list(ov.FAIL_COLOR)).sum(1) < 80).any()  # orange: not a verdict colour


def test_a_region_on_an_ok_part_is_never_drawn_as_the_defect_outline() -> None:
    """Issue 26: a region over the pixel threshold on a part whose score is under the image
    threshold (badge OK) was outlined exactly as a defect is. On an OK part it is a thin dashed
    dark line (never the solid white of NG), and the legend says what each line means."""
    img = np.full((256, 256, 1), 160, np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    mask[80:160, 80:160] = 255
    base = ov.render(img)
    ng = ov.render(img, mask=mask, verdict="NG", score=0.9, image_threshold=0.5)
    ok = ov.render(img, mask=mask, verdict="OK", score=0.3, image_threshold=0.5)
    ring = np.zeros((256, 256), bool)  # where an outline of the square can be, away from the badge
    ring[70:170, 70:170] = True
    ring[90:150, 90:150] = False
    white = lambda out: (out.astype(int).min(axis=2) > 235) & ring  # noqa: E731
    assert white(ng).sum() > 300  # NG: the solid white outline
    assert white(ok).sum() == 0  # OK: nothing that looks like it
    drawn = (ok != base).any(axis=2) & ring
    gray = np.abs(ok.astype(int) - list(ov.SUBTHRESHOLD_COLOR)).max(axis=2) < 30
    assert drawn.sum() > 40 and (gray[drawn]).mean() > 0.8  # a dark gray line is drawn
    edge = drawn[80, 60:180]  # along the top edge: dashes, not one line
    assert 0.2 < edge[20:100].mean() < 0.8
    assert drawn.sum() < 0.6 * ((ng != base).any(axis=2) & ring).sum()  # thinner than the NG outline
    assert ov.legend_text("anomaly_map", True, 0.25, "NG") == "colour: anomaly map (decides)  outline: defect, map >= 0.25"
    assert ov.legend_text("anomaly_map", True, 0.25, "OK") == "colour: anomaly map (decides)  dashed: map >= 0.25, part OK"
    assert ov.legend_text("attention", True, 0.25, "OK").endswith("  dashed: anomaly map >= 0.25, part OK")

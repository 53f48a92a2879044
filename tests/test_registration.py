"""core.registration on synthetic screw-like parts (known angles and shifts) and a few real screws."""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import yaml

from core.images import read_image, resize_to_model
from core.registration import STATUSES, Registration, RegistrationSpec, fit, register, warp_back
from tests.conftest import SCREW

SIZE = 512          # the decoded image
MODEL = 128         # the model's input
AXIS = RegistrationSpec("principal_axis")
ANGLES = (-170, -135, -90, -60, -30, -5, 0, 10, 45, 90, 120, 150, 175)


def part(angle: float = 0.0, shift: tuple[float, float] = (0, 0), scale: float = 1.0, head: bool = True,
         size: int = SIZE, bg: int = 200, fg: int = 60, seed: int = 0) -> np.ndarray:
    """uint8 [size, size, 1]: a bar with a wider head block at one end on a bright ground; the
    head-to-tail direction at `angle` degrees counter-clockwise as displayed, the bar's middle at
    the image centre + shift."""
    img = np.full((size, size), bg, np.uint8)
    a = math.radians(angle)
    d, n = np.array([math.cos(a), -math.sin(a)]), np.array([math.sin(a), math.cos(a)])
    c = np.array([(size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1]])
    length, half = 0.6 * size * scale, 0.04 * size * scale

    def block(x0: float, x1: float, w: float) -> None:
        pts = np.array([c + x * d + y * n for x, y in ((x0, -w), (x1, -w), (x1, w), (x0, w))])
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], fg, lineType=cv2.LINE_AA, shift=4)

    block(-length / 2, length / 2, half)
    if head:
        block(-length / 2, -length / 2 + 0.1 * size * scale, 0.09 * size * scale)
    noise = np.random.default_rng(seed).integers(-3, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)[:, :, None]


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.fixture(scope="module")
def fitted() -> RegistrationSpec:
    train = [part(a, (7 * i % 23 - 11, 5 * i % 17 - 8), seed=i) for i, a in enumerate(range(-180, 180, 30))]
    return fit(train, RegistrationSpec("principal_axis", "background"))


@pytest.mark.parametrize("spec_name", ["unfitted", "fitted"])
def test_angle_head_side_and_position_are_recovered(spec_name: str, fitted: RegistrationSpec) -> None:
    spec = AXIS if spec_name == "unfitted" else fitted
    reference, _ = register(part(0), spec, MODEL, MODEL)
    dark = reference[:, :, 0] < 130
    assert dark[:, :MODEL // 2].sum() > 1.3 * dark[:, MODEL // 2:].sum()      # the head is on the left
    for i, a in enumerate(ANGLES):
        out, reg = register(part(a, (25 * math.cos(i), -30 * math.sin(i)), seed=i), spec, MODEL, MODEL)
        assert reg.status == "ok" and reg.ok, reg.reason
        assert angle_error(reg.angle, a) < 1.0, (a, reg.angle)
        diff = np.abs(out.astype(int) - reference.astype(int))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) < 60, (a, diff.mean())


def test_flip_is_the_head_side_decision() -> None:
    _, right = register(part(0), AXIS, MODEL, MODEL)      # head on the left: the axis points at the tail
    _, left = register(part(180), AXIS, MODEL, MODEL)     # head on the right: turned 180 degrees more
    assert not right.flip and left.flip
    assert angle_error(left.angle, 180) < 1.0


def _iou_and_boundary_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """IoU of two masks and the largest distance (pixels) of a disagreeing pixel from a's boundary."""
    iou = (a & b).sum() / (a | b).sum()
    inside = cv2.distanceTransform(a.astype(np.uint8), cv2.DIST_L2, 3)        # to the nearest outside
    outside = cv2.distanceTransform((~a).astype(np.uint8), cv2.DIST_L2, 3)    # to the nearest inside
    wrong = a ^ b
    err = np.where(a, inside, outside)[wrong]
    return float(iou), float(err.max()) if err.size else 0.0


@pytest.mark.parametrize("angle", [-150, -40, 0, 33, 100])
def test_register_then_warp_back_is_the_identity_on_the_silhouette(angle: float) -> None:
    img = part(angle, (20, -15))
    out, reg = register(img, AXIS, MODEL, MODEL)
    # a soft silhouette (part coverage per pixel), as maps are continuous: thresholding before the
    # warp would add a quantization of its own
    def soft(a: np.ndarray) -> np.ndarray:
        return np.clip((200.0 - a[:, :, 0]) / 140.0, 0, 1).astype(np.float32)
    original = cv2.resize(soft(img), (MODEL, MODEL), interpolation=cv2.INTER_AREA) > 0.5
    back = warp_back(soft(out), reg, MODEL, MODEL) > 0.5
    iou, err = _iou_and_boundary_error(original, back)
    assert iou > 0.98 and err <= 1.0, (iou, err)
    # the same map also comes back at the decoded size, and as a mask
    assert warp_back(soft(out)[None], reg, SIZE, SIZE).shape == (SIZE, SIZE)
    assert set(np.unique(warp_back(out[:, :, 0] < 130, reg, SIZE, SIZE, nearest=True))) <= {0.0, 1.0}


def test_matrix_maps_decoded_pixels_to_the_model_input() -> None:
    img = part(40, (30, 10))
    out, reg = register(img, AXIS, MODEL, MODEL)
    ys, xs = np.nonzero(img[:, :, 0] < 100)
    x, y = reg.matrix @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    # the part's pixels land on the registered part: horizontal, its middle at the frame's centre
    assert (out[np.rint(y).astype(int), np.rint(x).astype(int), 0] < 150).mean() > 0.97
    assert np.ptp(x) > 3 * np.ptp(y)       # length 0.6, head 0.18 of the image
    assert abs((x.min() + x.max()) / 2 - (MODEL - 1) / 2) < 1.0 and abs(y.mean() - (MODEL - 1) / 2) < 1.0


@pytest.mark.parametrize("channels, shape", [(1, (SIZE, SIZE)), (3, (300, 420)), (1, (64, 64)), (3, (100, 140))])
def test_method_none_is_the_plain_resize_bit_for_bit(channels: int, shape: tuple[int, int]) -> None:
    img = np.random.default_rng(1).integers(0, 256, shape + (channels,), dtype=np.uint8)
    out, reg = register(img, RegistrationSpec(), MODEL, MODEL)
    assert reg.status == "off" and reg.ok and reg.gain == 1.0
    assert out.dtype == np.uint8 and np.array_equal(out, resize_to_model(img, MODEL, MODEL))
    H, W = shape
    sx, sy = MODEL / W, MODEL / H
    assert np.allclose(reg.matrix, [[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
    m = np.random.default_rng(2).random((MODEL, MODEL), dtype=np.float32)
    expected = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(warp_back(m, reg, H, W), expected)
    assert np.array_equal(warp_back(m[None], reg, H, W), expected)


def test_failures_are_reported_with_a_usable_array(fitted: RegistrationSpec) -> None:
    blank = np.clip(200 + np.random.default_rng(0).integers(-4, 5, (SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    two = np.minimum(part(0, (0, -110), scale=0.6), part(0, (0, 110), scale=0.6, seed=1))
    cut = part(0, (200, 0))
    cases = {"no_part": blank, "several_parts": two, "cut_by_border": cut}
    for status, img in cases.items():
        for spec in (AXIS, fitted):
            out, reg = register(img, spec, MODEL, MODEL)
            assert reg.status == status and not reg.ok and reg.reason, (status, reg.status, reg.reason)
            assert out.shape == (MODEL, MODEL, 1) and out.dtype == np.uint8
            assert np.allclose(reg.matrix, [[MODEL / SIZE, 0, 0.5 * MODEL / SIZE - 0.5],
                                            [0, MODEL / SIZE, 0.5 * MODEL / SIZE - 0.5]])
    disc = np.full((SIZE, SIZE), 200, np.uint8)
    cv2.circle(disc, (SIZE // 2, SIZE // 2), 60, 60, -1)
    big = part(30, scale=1.45)
    for img, words in ((disc[:, :, None], "axis"), (big, "area")):
        assert register(img, AXIS, MODEL, MODEL)[1].status == ("unusual_pose" if words == "axis" else "ok")
        _, reg = register(img, fitted, MODEL, MODEL)
        assert reg.status == "unusual_pose" and words in reg.reason, reg.reason
    row = reg.as_row()
    assert row["status"] == "unusual_pose" and isinstance(row["matrix"], list) and row["area"] > 0
    yaml.safe_dump(row)


def test_lighting_gain_brings_a_darker_copy_to_the_same_input(fitted: RegistrationSpec) -> None:
    assert fitted.background == pytest.approx(200, abs=1)
    img = part(65, (10, 20))
    dark = np.rint(img * 0.85).astype(np.uint8)
    a, ra = register(img, fitted, MODEL, MODEL)
    b, rb = register(dark, fitted, MODEL, MODEL)
    assert ra.ok and rb.ok and rb.gain == pytest.approx(ra.gain / 0.85, rel=0.01)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    # lighting alone keeps the plain geometry
    c, rc = register(dark, RegistrationSpec("none", "background", background=200.0), MODEL, MODEL)
    assert rc.status == "off" and np.allclose(rc.matrix, register(dark, RegistrationSpec(), MODEL, MODEL)[1].matrix)
    assert abs(np.median(c) - 200) <= 2


def test_colour_images_register_like_gray() -> None:
    gray = part(-75, (15, 5))
    rgb = np.repeat(gray, 3, axis=2)
    (g, rg), (c, rc) = register(gray, AXIS, MODEL, MODEL), register(rgb, AXIS, MODEL, MODEL)
    assert c.shape == (MODEL, MODEL, 3) and rc.angle == pytest.approx(rg.angle, abs=1e-6)
    assert np.abs(c[:, :, 1].astype(int) - g[:, :, 0]).max() <= 1


def test_fit_on_discs_falls_back_to_none_with_a_warning() -> None:
    discs = []
    for i in range(5):
        img = np.full((256, 256), 190, np.uint8)
        cv2.circle(img, (100 + 10 * i, 120 + 5 * i), 50, 50, -1)
        discs.append(img[:, :, None])
    with pytest.warns(UserWarning, match="no dominant axis"):
        spec = fit(discs, RegistrationSpec("principal_axis", "background"))
    assert spec.method == "none" and spec.lighting == "background" and spec.background == pytest.approx(190, abs=1)
    out, reg = register(discs[0], spec, 64, 64)
    assert reg.status == "off" and out.shape == (64, 64, 1)


def test_fit_with_equal_ends_aligns_the_axis_only() -> None:
    bars = [part(a, head=False, seed=i) for i, a in enumerate((-120, -60, 0, 45, 90, 150))]
    with pytest.warns(UserWarning, match="nearly equal"):
        spec = fit(bars, AXIS)
    assert spec.method == "principal_axis" and not spec.head_side and spec.profile is None
    _, reg = register(part(150, head=False), spec, MODEL, MODEL)
    assert reg.ok and not reg.flip and angle_error(reg.angle, -30) < 1.0


def test_fit_fills_the_spec(fitted: RegistrationSpec) -> None:
    assert fitted.head_side and fitted.samples == 12 and 0.5 < fitted.zoom <= 1.0
    assert fitted.area[0] < 0.05 < fitted.area[1] and fitted.elongation[0] > 1.5
    assert fitted.head_ratio[0] > 1.15 and fitted.profile and 0 < fitted.profile_centre < len(fitted.profile)
    with pytest.raises(ValueError, match="no training image"):
        fit([np.full((64, 64, 1), 128, np.uint8)], AXIS)


def test_spec_mapping_round_trip_and_errors(fitted: RegistrationSpec) -> None:
    for spec in (RegistrationSpec(), fitted):
        m = yaml.safe_load(yaml.safe_dump(spec.to_mapping()))
        assert RegistrationSpec.from_mapping(m) == spec
    assert RegistrationSpec.from_mapping(None) == RegistrationSpec()
    assert not RegistrationSpec().active and fitted.active and RegistrationSpec(lighting="background").active
    for bad, key in (({"method": "sift"}, "method"), ({"lighting": "flash"}, "lighting"), ({"angle": 3}, "angle"),
                     ({"background": 300}, "background"), ({"area": [0.3, 0.1]}, "area"), ({"zoom": 0}, "zoom"),
                     ({"profile": [0.1, 0.2]}, "profile_centre"), ({"head_side": "yes"}, "head_side"),
                     ({"samples": -1}, "samples")):
        with pytest.raises(ValueError, match=f"registration {key}"):
            RegistrationSpec.from_mapping(bad)
    with pytest.raises(ValueError, match="background: unset"):
        register(part(), RegistrationSpec("principal_axis", "background"), MODEL, MODEL)
    with pytest.raises(ValueError, match="uint8"):
        register(np.zeros((8, 8), np.float32), AXIS, MODEL, MODEL)


def test_registration_row_is_json_able() -> None:
    _, reg = register(part(20), AXIS, MODEL, MODEL)
    assert isinstance(reg, Registration) and reg.status in STATUSES
    with pytest.raises(ValueError, match="status"):
        Registration("maybe", reg.matrix, reg.size)
    with pytest.raises(ValueError, match="warp_back"):
        warp_back(np.zeros((2, 8, 8), np.float32), reg, SIZE, SIZE)
    row = reg.as_row()
    assert row["status"] == "ok" and len(row["matrix"]) == 2 and angle_error(row["angle"], 20) < 1.0
    yaml.safe_dump(row)


def test_real_screws_register_and_the_head_side_survives_a_half_turn() -> None:
    if not (SCREW / "train" / "good").is_dir():
        pytest.skip(f"{SCREW} is absent")
    train = [read_image(p, 1) for p in sorted((SCREW / "train" / "good").glob("*.png"))[:12]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # every training screw is usable and its head side decisive
        spec = fit(train, RegistrationSpec("principal_axis", "background"))
    for p in sorted((SCREW / "test" / "good").glob("*.png"))[:4]:
        img = read_image(p, 1)
        a, ra = register(img, spec, 128, 128)
        b, rb = register(np.ascontiguousarray(np.rot90(img, 2)), spec, 128, 128)
        assert ra.status == "ok" and rb.status == "ok", (p, ra.reason, rb.reason)
        assert ra.flip != rb.flip and angle_error(ra.angle + 180, rb.angle) < 0.5, (p, ra.angle, rb.angle)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0, p

"""core.registration's `rotation` and `shift` methods on synthetic parts with known poses, and the
method table every CLI takes its choices from."""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import yaml

from core.registration import METHODS, REGISTRATIONS, RegistrationSpec, fit, register, warp_back

SIZE, MODEL = 300, 128


def nut(angle: float = 0.0, shift: tuple[float, float] = (0, 0), mirror: bool = False, seed: int = 0,
        size: int = SIZE, mark: bool = True, light: float = 0.0, wobble: float = 0.0) -> np.ndarray:
    """uint8 [size, size, 3]: a bright four-lobed part with hooked (chiral) lobes, a hole and one
    dark mark (`mark`) on a dark ground, turned `angle` degrees counter-clockwise as displayed about
    its centre, moved by `shift`; `mirror` draws its mirror image (a part upside down); `light`:
    the lamp's gain across the picture, left to right (it stays with the camera, not the part);
    `wobble`: each lobe's length varies by up to this fraction, drawn per part (from `seed`)."""
    big = 4 * size
    img = np.full((big, big, 3), (20, 22, 25), np.uint8)
    c = big / 2
    cv2.circle(img, (int(c), int(c)), int(0.28 * big), (150, 170, 160), -1)
    lengths = 1 + wobble * np.random.default_rng(seed + 1000).uniform(-1, 1, 4)
    for k in range(4):
        a = math.radians(90 * k)
        pts = []
        for r, da in ((0.25, -20), (0.42, -8), (0.44, 12), (0.30, 25)):   # a hooked lobe
            t = a + math.radians(da)
            r = r * lengths[k] if r > 0.4 else r
            pts.append((c + r * big * math.cos(t), c + r * big * math.sin(t)))
        cv2.fillPoly(img, [np.array(pts, np.int32)], (140, 165, 150))
    cv2.circle(img, (int(c), int(c)), int(0.09 * big), (15, 15, 18), -1)
    if mark:
        cv2.circle(img, (int(c + 0.17 * big), int(c - 0.05 * big)), int(0.03 * big), (60, 40, 40), -1)
    if mirror:
        img = np.ascontiguousarray(img[:, ::-1])
    M = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    M[:, 2] += 4 * np.array(shift)
    img = cv2.warpAffine(img, M, (big, big), flags=cv2.INTER_LINEAR, borderValue=(20, 22, 25))
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    out = out * (1 + light * np.linspace(-1, 1, size))[None, :, None]
    noise = np.random.default_rng(seed).integers(-3, 4, out.shape)
    return np.clip(out.astype(int) + noise, 0, 255).astype(np.uint8)


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.fixture(scope="module")
def rotation_spec() -> RegistrationSpec:
    rng = np.random.default_rng(0)
    train = [nut(float(rng.uniform(-180, 180)), tuple(rng.uniform(-12, 12, 2)), seed=i) for i in range(12)]
    return fit(train, RegistrationSpec("rotation", "background"))


def test_the_method_table_is_the_one_list_of_choices() -> None:
    assert REGISTRATIONS == tuple(METHODS) == ("none", "principal_axis", "rotation", "shift")
    for name, module in METHODS.items():
        assert module is None or (callable(module.pose) and callable(module.fit) and isinstance(module.NEEDS_PART, bool))
    with pytest.raises(ValueError, match="registration method: 'polar' is not one of none, principal_axis, rotation"):
        RegistrationSpec("polar")


def test_rotation_fit_fills_the_spec(rotation_spec: RegistrationSpec) -> None:
    s = rotation_spec
    assert s.method == "rotation" and s.samples == 12 and s.reference and 0.3 < s.radius < 0.5
    assert 0.6 <= s.residual <= 0.9 and 0.1 <= s.zoom <= 4 and s.background == pytest.approx(22, abs=2)
    assert s.symmetry == 4          # near-symmetric: the small mark hardly breaks the four lobes' symmetry
    assert not s.least_turn         # but it is what tells the four turns apart: the best-correlated one is kept
    m = yaml.safe_load(yaml.safe_dump(s.to_mapping()))
    assert RegistrationSpec.from_mapping(m) == s
    with pytest.raises(ValueError, match="registration reference"):
        RegistrationSpec("rotation", reference="not a picture")
    with pytest.raises(ValueError, match="reference: unset"):
        register(nut(), RegistrationSpec("rotation"), MODEL, MODEL)


@pytest.mark.parametrize("angle", [-170, -95, -30, 0, 17, 90, 133, 179])
def test_rotation_recovers_any_angle(rotation_spec: RegistrationSpec, angle: float) -> None:
    reference, r0 = register(nut(0), rotation_spec, MODEL, MODEL)
    out, reg = register(nut(angle, (9, -14), seed=3), rotation_spec, MODEL, MODEL)
    assert reg.status == "ok" and r0.status == "ok", reg.reason
    assert angle_error(reg.angle - r0.angle, angle) < 1.0, (angle, reg.angle, r0.angle)
    diff = np.abs(out.astype(int) - reference.astype(int))
    assert diff.mean() < 3.0, diff.mean()
    assert reg.residual < 0.1


def test_rotation_takes_the_least_turn_of_a_symmetric_part_lit_from_one_side() -> None:
    """Four lobes that differ a little from part to part, light from the left: which of the four
    turns correlates best is the noise of the lobes, the least one keeps every part's light on the
    same side, so registered parts look alike."""
    rng = np.random.default_rng(1)
    angles = rng.uniform(-180, 180, 16)
    spec = fit([nut(float(a), mark=False, light=0.3, wobble=0.04, seed=i) for i, a in enumerate(angles)],
               RegistrationSpec("rotation"))
    assert spec.symmetry == 4 and spec.least_turn and spec.turn_limit is None
    out = [register(nut(a, mark=False, light=0.3, seed=7), spec, MODEL, MODEL) for a in (-170, -100, -44, 10, 80, 135)]
    assert all(r.ok for _, r in out)
    assert all(angle_error(r.angle, 0) <= 46 for _, r in out), [r.angle for _, r in out]
    for o, _ in out:    # the lamp (brighter to the right) stays on the registered part's right
        g = o.astype(float).mean(axis=2)
        assert g[:, MODEL // 2:].mean() > g[:, :MODEL // 2].mean() + 5


def test_registration_is_the_same_every_time(rotation_spec: RegistrationSpec, shift_spec: RegistrationSpec) -> None:
    """OpenCV 4.x's phaseCorrelate windows its inputs in place, read-only ones included: the cached
    reference faded with every image registered. The second registration must equal the first."""
    from core.registration.spec import decode_picture, phase_shift  # noqa: PLC0415

    for spec, img in ((rotation_spec, nut(33, (4, -3))), (shift_spec, fixture_part((1.5, -2.0)))):
        before = decode_picture(spec.reference).copy()
        first = [register(img, spec, MODEL, MODEL) for _ in range(3)]
        assert all(np.array_equal(o, first[0][0]) and r.angle == first[0][1].angle for o, r in first)
        assert np.array_equal(decode_picture(spec.reference), before)
    a = cv2.GaussianBlur(np.random.default_rng(0).random((64, 64)).astype(np.float32), (0, 0), 2)
    b = cv2.warpAffine(a, np.float32([[1, 0, 2], [0, 1, -1]]), (64, 64), borderMode=cv2.BORDER_REFLECT)
    kept = (a.copy(), b.copy())
    dx, dy = phase_shift(a, b)
    assert abs(dx - 2) < 0.5 and abs(dy + 1) < 0.5
    assert np.array_equal(a, kept[0]) and np.array_equal(b, kept[1])


def test_rotation_never_mirrors(rotation_spec: RegistrationSpec) -> None:
    """A part upside down (its mirror image) registers and is scored, and looks different: it
    must stay an anomaly, not be mirrored back into a good part."""
    reference, _ = register(nut(0), rotation_spec, MODEL, MODEL)
    good = [register(nut(a, seed=5), rotation_spec, MODEL, MODEL) for a in (-60, 25, 140)]
    flipped = [register(nut(a, mirror=True, seed=5), rotation_spec, MODEL, MODEL) for a in (-60, 25, 140)]
    assert all(r.ok for _, r in good + flipped)
    assert min(r.residual for _, r in flipped) > 2 * max(r.residual for _, r in good)
    worst_good = max(np.abs(o.astype(int) - reference).mean() for o, _ in good)
    assert min(np.abs(o.astype(int) - reference).mean() for o, _ in flipped) > 2 * worst_good


def test_rotation_warp_back_is_the_identity(rotation_spec: RegistrationSpec) -> None:
    img = nut(70, (-10, 6))
    out, reg = register(img, rotation_spec, MODEL, MODEL)
    soft = lambda a: np.clip((a.mean(axis=2) - 40.0) / 80.0, 0, 1).astype(np.float32)  # noqa: E731
    original = cv2.resize(soft(img), (MODEL, MODEL), interpolation=cv2.INTER_AREA) > 0.5
    back = warp_back(soft(out), reg, MODEL, MODEL) > 0.5
    assert (original & back).sum() / (original | back).sum() > 0.97


def test_rotation_failures(rotation_spec: RegistrationSpec) -> None:
    blank = np.full((SIZE, SIZE, 3), 22, np.uint8)
    assert register(blank, rotation_spec, MODEL, MODEL)[1].status == "no_part"
    square = np.full((SIZE, SIZE, 3), 22, np.uint8)
    cells = np.random.default_rng(0).integers(120, 250, (6, 6)).astype(np.uint8)
    square[65:235, 65:235] = cv2.resize(cells, (170, 170), interpolation=cv2.INTER_NEAREST)[:, :, None]
    # about the nut's area, nothing like it: its angular structure matches at no angle
    _, good = register(nut(40), rotation_spec, MODEL, MODEL)
    _, reg = register(square, rotation_spec, MODEL, MODEL)
    assert reg.residual > 50 * good.residual
    _, reg = register(square, replace(rotation_spec, residual=0.2), MODEL, MODEL)
    assert reg.status == "unusual_pose" and "no angle" in reg.reason and reg.residual > 0.2


def test_rotation_turns_a_fixed_pose_part_no_further_than_training(rotation_spec: RegistrationSpec) -> None:
    """Parts that came in one pose (a fixture) are turned back only as far as the training parts
    were turned: a part turned further is the defect and must stay turned (or fail, saying so),
    while parts that came at any angle are searched over the full turn."""
    assert rotation_spec.turn_limit is None
    rng = np.random.default_rng(0)
    spec = fit([nut(float(rng.uniform(-5, 5)), tuple(rng.uniform(-12, 12, 2)), seed=i) for i in range(12)],
               RegistrationSpec("rotation", "background"))
    assert 5 < spec.turn_limit < 12
    reference, r0 = register(nut(0), spec, MODEL, MODEL)
    out, reg = register(nut(-6, seed=3), spec, MODEL, MODEL)        # within the training's play: corrected
    assert reg.status == "ok" and angle_error(reg.angle - r0.angle, -6) < 1.0
    assert np.abs(out.astype(int) - reference).mean() < 3.0
    out, reg = register(nut(20, seed=3), spec, MODEL, MODEL)        # beyond it: stays turned, lights up
    assert reg.status == "ok" and abs(reg.angle) <= spec.turn_limit + 1e-6
    assert np.abs(out.astype(int) - reference).mean() > 3 * 3.0
    _, reg = register(nut(40, seed=3), spec, MODEL, MODEL)          # far beyond: rejected, and says why
    assert reg.status == "unusual_pose" and "turned 39 degrees from the training pose" in reg.reason
    with pytest.raises(ValueError, match="turn_limit"):
        RegistrationSpec("rotation", turn_limit=200.0)


def fixture_part(shift: tuple[float, float] = (0, 0), missing: bool = False, seed: int = 0) -> np.ndarray:
    """uint8 [200, 240, 1]: a board filling the picture with a few components, moved by `shift`."""
    big = np.full((800, 960), 90, np.uint8)
    rng = np.random.default_rng(42)
    for i in range(8):
        x, y = rng.integers(80, 880), rng.integers(80, 720)
        cv2.rectangle(big, (int(x) - 40, int(y) - 25), (int(x) + 40, int(y) + 25), int(rng.integers(150, 250)), -1)
    if not missing:
        cv2.circle(big, (480, 400), 70, 30, -1)
    M = np.array([[1.0, 0, 4 * shift[0]], [0, 1.0, 4 * shift[1]]])
    big = cv2.warpAffine(big, M, (960, 800), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = cv2.resize(big, (240, 200), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(seed).integers(-2, 3, out.shape)
    return np.clip(out.astype(int) + noise, 0, 255).astype(np.uint8)[:, :, None]


@pytest.fixture(scope="module")
def shift_spec() -> RegistrationSpec:
    rng = np.random.default_rng(3)
    return fit([fixture_part(tuple(rng.uniform(-3, 3, 2)), seed=i) for i in range(10)], RegistrationSpec("shift"))


def test_shift_corrects_the_jitter_sub_pixel(shift_spec: RegistrationSpec) -> None:
    assert shift_spec.reference and 0 < shift_spec.shift_limit < 0.05
    reference, _ = register(fixture_part(), shift_spec, 100, 120)
    out, reg = register(fixture_part((2.5, -1.75), seed=7), shift_spec, 100, 120)
    assert reg.status == "ok" and reg.angle == 0.0
    assert np.abs(out.astype(int) - reference).mean() < 1.5
    plain, _ = register(fixture_part((2.5, -1.75), seed=7), RegistrationSpec(), 100, 120)
    assert np.abs(plain.astype(int) - reference).mean() > 2 * np.abs(out.astype(int) - reference).mean()


def test_shift_leaves_a_moved_or_missing_part_an_anomaly(shift_spec: RegistrationSpec) -> None:
    """Beyond the training jitter the part stays where it is (only the jitter is corrected), and a
    missing part is scored (status ok), never skipped as a registration failure."""
    reference, _ = register(fixture_part(), shift_spec, 100, 120)
    moved, reg = register(fixture_part((20, 0)), shift_spec, 100, 120)
    assert reg.status == "ok" and np.abs(moved.astype(int) - reference).mean() > 5
    limit = shift_spec.shift_limit * 240
    assert abs(reg.centre[0] - 119.5) <= limit + 1e-6
    gone, reg = register(fixture_part(missing=True), shift_spec, 100, 120)
    assert reg.status == "ok" and reg.residual > 0.01
    other = np.zeros((150, 240, 1), np.uint8) + 90
    _, reg = register(other, shift_spec, 100, 120)
    assert reg.status == "unusual_pose" and "shape" in reg.reason

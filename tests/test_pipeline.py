"""runtime.pipeline: one object opens, prepares, infers, judges and draws for every consumer."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from runtime.model import ModelError
from runtime.pipeline import Pipeline
from test_runtime_models import make_stub_model, stub_sidecars  # noqa: F401 - fixture


def part(defect: bool, size: int = 48) -> np.ndarray:
    img = np.full((size, size), 40, np.uint8)
    if defect:
        img[10:20, 25:35] = 250
    return img


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_model(tmp_path_factory.mktemp("pipe"))


def test_paths_arrays_and_frames_give_the_same_verdicts(stub: Path, stub_sidecars: None, tmp_path: Path) -> None:
    good, bad = part(False), part(True)
    cv2.imwrite(str(tmp_path / "bad.png"), bad)
    with Pipeline.open(stub) as pipe:
        [from_file] = pipe(tmp_path / "bad.png")
        [from_frame] = pipe(cv2.cvtColor(bad, cv2.COLOR_GRAY2BGR), bgr=True)  # a colour camera's frame
        from_gray, ok = pipe([bad, good])  # a list: one batch, results in order
        for r in (from_file, from_frame, from_gray):
            assert r.verdict == "NG" and r.inspection.score == pytest.approx(250 / 255, abs=1e-3)
            x, y, w, h = r.inspection.boxes[0]
            assert (x, y, w, h) == pytest.approx((25, 10, 10, 10), abs=2)  # on the 48x48 image, not the 16x16 input
        assert ok.verdict == "OK" and ok.inspection.area == 0
        # the steps one by one, as the camera runs them
        p = pipe.prepare(cv2.cvtColor(bad, cv2.COLOR_GRAY2BGR), bgr=True)
        res = pipe.judge(p, pipe.infer([p])[0])
        assert res.score == from_file.inspection.score and res.verdict == "NG"


def test_render_layers_and_states(stub: Path, stub_sidecars: None) -> None:
    with Pipeline.open(stub, explain="both") as pipe:
        [r] = pipe(part(True, 256), keep_maps=True)
        both = pipe.render(r)
        assert both.shape == (256, 2 * 256 + 4, 3)
        one = pipe.render(r, explain="anomaly_map")
        assert one.shape == (256, 256, 3) and (both[:, :256] == one).all()
        assert "anomaly map (decides)" in pipe.legend("anomaly_map")
        assert "latent attention (explains)" in pipe.legend("attention")
    with Pipeline.open(stub, image=2.0) as pipe:  # nothing reaches 2.0: every part OK
        assert pipe([part(True)])[0].verdict == "OK"


def test_open_refuses_what_it_cannot_honour(tmp_path: Path, stub_sidecars: None) -> None:
    m = make_stub_model(tmp_path / "m")
    with pytest.raises(ModelError, match="not a finite number"):
        Pipeline.open(m, pixel=float("nan"))
    with pytest.raises(ModelError, match="explain 'gradients': choose one of"):
        Pipeline.open(m, explain="gradients")
    no_thresholds = make_stub_model(tmp_path / "n", thresholds={})
    with Pipeline.open(no_thresholds) as pipe:
        [r] = pipe(part(True))
        assert r.verdict == "NO VERDICT" and r.inspection.area is None
        assert "NO VERDICT" in pipe.thresholds.describe()


def test_a_failed_registration_is_a_result_with_its_reason(tmp_path: Path, stub_sidecars: None) -> None:
    """A model trained on registered parts: an empty picture has no part to turn, and must not be
    scored as if it had one."""
    m = make_stub_model(tmp_path / "r")
    side = yaml.safe_load(m.with_suffix(".yaml").read_text())
    side["registration"] = {"method": "principal_axis", "lighting": "none"}
    m.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    blank = np.full((64, 64), 200, np.uint8)
    bar = blank.copy()
    cv2.rectangle(bar, (10, 28), (54, 36), 30, -1)
    with Pipeline.open(m) as pipe:
        empty, turned = pipe([blank, bar])
        assert empty.inspection is None and empty.error.startswith("registration no_part")
        assert empty.verdict is None
        assert turned.error is None and turned.prepared.registration.status == "ok"
        picture = pipe.render(empty)
        assert picture.shape == (64, 64, 3)

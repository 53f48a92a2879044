"""calibration.synthetic: a model scored on synthetic defects pasted on held-out good parts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.synthetic import main, recall_at, score
from core.synthetic import make_parts
from families.template.build import build


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("syn")
    data = make_parts(root / "data", n_train=16, n_good=8, n_defect=2, size=128)
    build(data, root / "t.onnx", size=64, channels=1, k=3)
    return root / "t.onnx", data


def test_recall_at_the_fpr_by_hand() -> None:
    labels = np.array([0] * 20 + [1] * 4, bool)
    scores = np.r_[np.arange(20) / 20, [0.5, 0.96, 0.97, 2.0]]
    # one good part of 20 may be rejected (5 %): the threshold sits at the 19th good score, 0.9
    assert recall_at(labels, scores) == 0.75


def test_a_registered_template_tells_synthetic_defects_from_good_parts(template: tuple[Path, Path]) -> None:
    model, data = template
    r = score(model, data / "test", seed=0, copies=2)
    assert r["images"] == {"good": 8, "defective": 16, "failed_registration": 0}
    assert r["auroc"]["image"] > 0.8 and r["auroc"]["pixel"] > 0.8 and 0 < r["aupro"] <= 1
    assert r == {**score(model, data / "test", seed=0, copies=2), "seconds": r["seconds"], "ms_per_image": r["ms_per_image"]}


def test_the_cli_writes_json_and_says_what_it_measured(template: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, data = template
    assert main(["--engine", str(model), "--data", str(data / "test" / "good"), "--out", str(tmp_path / "r.json")]) == 0
    assert "synthetic defects on 8 good parts" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["mode"] == "synthetic"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes((data / "test" / "good").iterdir().__next__().read_bytes())
    assert main(["--engine", str(model), "--data", str(tmp_path / "one"), "--out", str(tmp_path / "x.json")]) == 1
    assert "at least 2 good images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--engine", str(tmp_path / "missing.onnx"), "--data", str(data), "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2

"""The benchmark commands' own logic: argument checks, paths, result files (not their numbers)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_runtime_models import make_stub_model, stub_sidecars  # noqa: F401 - fixture


@pytest.mark.parametrize("flags", [["--rounds", "0"], ["--repeats", "0"], ["--steps", "0"], ["--batches", "8", "0"]])
def test_inspect_bench_usage_errors_exit_2_before_any_training(flags: list[str], tmp_path: Path) -> None:
    from bench.inspect import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_inspect_bench_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.inspect import main

    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no readable images" in capsys.readouterr().err


def test_crude_thresholds_without_a_good_folder_use_every_image(tmp_path: Path, stub_sidecars: None) -> None:
    from bench.inspect import crude_thresholds

    model = make_stub_model(tmp_path / "m")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, v in enumerate((60, 120)):  # the stub's anomaly map is the image's brightness
        cv2.imwrite(str(flat / f"{i}.png"), np.full((20, 20), v, np.uint8))
    th = crude_thresholds(model, flat)
    assert th["image"] == pytest.approx(120 / 255, abs=0.01)


def test_disentanglement_rows_of_separate_invocations_are_merged(tmp_path: Path) -> None:
    from bench.disentanglement import merged_rows

    protocol = {"num_train": 10, "num_eval": 5}
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"metric_protocol": protocol,
                                "rows": [{"model": "beta_vae", "eval_accuracy": 0.4},
                                         {"model": "factorvae", "eval_accuracy": 0.1}]}))
    rows = merged_rows(path, [{"model": "factorvae", "eval_accuracy": 0.5}], protocol)
    assert [(r["model"], r["eval_accuracy"]) for r in rows] == [("beta_vae", 0.4), ("factorvae", 0.5)]
    # another metric protocol: the old rows are not comparable and are not kept
    assert merged_rows(path, [{"model": "ad_factorvae"}], {"num_train": 20}) == [{"model": "ad_factorvae"}]


def test_disentanglement_bench_refuses_an_empty_model_list() -> None:
    from bench.disentanglement import main

    with pytest.raises(SystemExit) as e:
        main(["--models", ","])
    assert e.value.code == 2


def test_parts_bench_measures_every_registration_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.parts import main
    from core.synthetic import make_parts

    make_parts(tmp_path / "root" / "synth", n_train=12, n_good=4, n_defect=3, size=96)
    args = ["--parts", "synth", "--root", str(tmp_path / "root"), "--families", "template", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "o" / "parts.json").read_text())["parts"]["synth"]
    names = [r["setting"] for r in rows]
    assert {"template-128-rotation+light", "template-128-none", "template-128-shift"} <= set(names)
    assert "template-128-rotation+light+tol1" in names or "template-128-principal_axis+light+tol1" in names
    for r in rows:
        assert all(0 <= r[m]["mean"] <= 1 for m in ("pixel_auroc", "aupro", "image_auroc")) and r["ms_per_image"]["mean"] > 0
    capsys.readouterr()
    assert main(args) == 0 and "== synth" not in capsys.readouterr().out   # a rerun measures nothing again
    with pytest.raises(SystemExit) as e:
        main(["--parts", "nothing", "--root", str(tmp_path / "root")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([*args, "--tolerance", "9"])
    assert e.value.code == 2


def test_setup_bench_runs_the_set_up_from_photographs_alone_and_measures_its_version(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.setup import main
    from core.synthetic import make_parts

    make_parts(tmp_path / "root" / "synth", n_train=20, n_good=4, n_defect=4, size=96)
    args = ["--parts", "synth", "--modes", "photos", "--budget", "2", "--root", str(tmp_path / "root"),
            "--out", str(tmp_path / "o")]
    assert main(args) == 0
    r = json.loads((tmp_path / "o" / "setup.json").read_text())["rows"][0]
    assert r["mode"] == "photos" and "synthetic defects" in r["rule"]       # no label was given to the set-up
    assert (r["good"], r["defective"]) == (4, 8) and 0 <= r["good_rejected"] <= 4 and 0 <= r["defects_caught"] <= 8
    assert 0.5 <= r["image_auroc"] <= 1 and r["deployed_threshold"] > 0
    assert len(list((tmp_path / "o" / "synth" / "photos" / "deploy" / "split" / "heldout" / "good").iterdir())) == 4
    capsys.readouterr()
    assert main(args) == 0 and "photos" in capsys.readouterr().out          # a rerun prints the table, runs nothing
    assert main(["--parts", "nothing", "--root", str(tmp_path / "root")]) == 2
